#!/usr/bin/env python3
"""Render accounts.conf, the accounts block every NATS node of a region includes.

It holds the broker's account ISTMO (the relay's nkey, JetStream, one export per agency
service) and one account per active agency (its nkey and exactly its own subjects), from
the broker's directory: DATA_DIR/broker (keys, made on the first run) and the database
(ISTMO_DATABASE_URL, or the SQLite file in DATA_DIR).

    deploy/nats/render-accounts.py --data-dir /var/lib/istmo --out /etc/nats/accounts.conf

Install the same file on every node and reload each (deploy/README.md). ``istmo up --join``
writes DATA_DIR/nats-accounts.conf the same way whenever the directory changes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from broker.bus.natsconf import render_accounts
from broker.config import Settings
from broker.files import write_private
from broker.runtime.stack import Stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo"))
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write accounts.conf")
    parser.add_argument(
        "--demo", action="store_true", help="load the demo directory into an empty registry"
    )
    args = parser.parse_args()
    stack = Stack(Settings.from_env(data_dir=args.data_dir), out=print)
    stack.prepare(demo=args.demo)
    layout = stack.nats_layout()
    write_private(args.out, render_accounts(layout).encode())
    print(f"{args.out}: accounts of the broker and {len(layout.agencies)} active agencies")


if __name__ == "__main__":
    main()
