"""The Istmo broker: policy decisions, relay and audit around the schemas core."""
