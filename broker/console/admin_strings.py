"""English and Spanish for the administrators' pages, added to the console's catalog.

Every key starts ``admin.``; ``broker.console.admin`` imports this module, which adds
the strings once (``broker.console.i18n.add_strings``).
"""

from __future__ import annotations

from broker.console.i18n import add_strings

__all__ = ["EN", "ES"]

EN: dict[str, str] = {
    "admin.title": "Administration",
    "admin.intro": "Agencies, their keys and status, and the policy in force. Every change "
    "asks for confirmation and is recorded in the audit log under your identity.",
    "admin.agencies": "Agencies",
    "admin.agencies_help": "By state and sector: status, keys; suspend, reinstate, revoke, "
    "enrolment tokens.",
    "admin.policy": "Policy",
    "admin.policy_help": "The policy set in force; check and simulate a candidate before "
    "adopting it.",
    "admin.count.active": "active",
    "admin.count.suspended": "suspended",
    "admin.count.revoked": "revoked",
    "admin.count.unenrolled": "not enrolled yet",
    "admin.version": "Version",
    # agencies
    "admin.filter.place": "State or community",
    "admin.filter.sector": "Sector",
    "admin.filter.status": "Status",
    "admin.filter.any": "any",
    "admin.filter.apply": "Show",
    "admin.filter.clear": "Clear",
    "admin.none": "No agency matches.",
    "admin.shown": "{n} agencies shown.",
    "admin.col.id": "Agency",
    "admin.col.name": "Name",
    "admin.col.sector": "Sector",
    "admin.col.status": "Status",
    "admin.col.keys": "Signing keys",
    "admin.col.rotated": "Last key registered (UTC)",
    "admin.col.clearance": "Clearance",
    "admin.not_enrolled": "not enrolled",
    "admin.keys_active": "{n} active",
    "admin.sector.police": "police",
    "admin.sector.military": "military",
    "admin.sector.foreign": "foreign affairs",
    "admin.sector.justice": "justice",
    "admin.sector.regional-centre": "regional centre",
    "admin.sector.auditor": "auditor",
    "admin.status.active": "active",
    "admin.status.suspended": "suspended",
    "admin.status.revoked": "revoked",
    # one agency
    "admin.agency": "Agency {id}",
    "admin.back": "All agencies",
    "admin.f.name": "Name",
    "admin.f.sector": "Sector",
    "admin.f.place": "State or communities",
    "admin.f.status": "Status",
    "admin.f.clearance": "Clearance",
    "admin.f.grade": "Takes sources graded at least",
    "admin.f.topics": "Topics followed",
    "admin.f.none": "none",
    "admin.keys": "Keys",
    "admin.keys_help": "Only public halves are registered. Compare a fingerprint with the "
    "one the agency reads from its own keystore before trusting a key.",
    "admin.k.kind": "Key",
    "admin.k.kind.signing": "signing",
    "admin.k.kind.encryption": "encryption",
    "admin.k.kind.nats": "NATS user",
    "admin.k.id": "Key id",
    "admin.k.algorithm": "Algorithm",
    "admin.k.fingerprint": "Fingerprint (SHA-256)",
    "admin.k.created": "Registered (UTC)",
    "admin.k.state": "State",
    "admin.k.current": "in use",
    "admin.k.old": "kept to verify old bulletins",
    "admin.k.revoked": "revoked {when}",
    "admin.k.none": "No keys: the agency has not enrolled yet.",
    "admin.actions": "Actions",
    "admin.no_actions": "No action applies: revocation is final.",
    "admin.done.suspend": "{id} is suspended. Its connection was closed; its deliveries wait "
    "until it is reinstated.",
    "admin.done.reinstate": "{id} is active again; its held deliveries now arrive.",
    "admin.done.revoke": "{id} is revoked, for good.",
    "admin.not_applied": "The change is recorded, but the running stack did not confirm it "
    "applied it; it applies at the next start.",
    # actions and their confirmation
    "admin.do.suspend": "Suspend…",
    "admin.do.reinstate": "Reinstate…",
    "admin.do.revoke": "Revoke…",
    "admin.do.token": "Issue an enrolment token…",
    "admin.do.revoke_key": "Revoke…",
    "admin.do.revoke_key_of": "Revoke the key {kid}",
    "admin.confirm.revoke_key": "Revoke a signing key of {id}?",
    "admin.explain.revoke_key": "Bulletins it signed until now stay verifiable; anything it "
    "signs from now on is refused by the relay and by every SDK.",
    "admin.explain.last_key": "This is the only active signing key of {id}: it cannot "
    "publish again until it has another (istmo keys rotate, before revoking this one).",
    "admin.done.key": "Key {kid} is revoked: what it signs from now on is refused.",
    "admin.confirm.suspend": "Suspend {id}?",
    "admin.confirm.reinstate": "Reinstate {id}?",
    "admin.confirm.revoke": "Revoke {id}?",
    "admin.confirm.token": "Issue an enrolment token for {id}?",
    "admin.explain.suspend": "It can neither publish nor receive from now on: nats-server "
    "drops its connection at once, its access tokens and console sessions stop working, "
    "and bulletins already routed to it wait in its queue until it is reinstated.",
    "admin.explain.reinstate": "It can publish and receive again; bulletins held while it "
    "was suspended are delivered.",
    "admin.explain.revoke": "Revocation is final: the agency can never be reinstated. "
    "Bulletins it signed before stay verifiable.",
    "admin.explain.token": "A one-time token that lets the agency register its public keys "
    "from its own machine. It is shown once, on the next page, and never again; any "
    "earlier unused token for this agency stops working.",
    "admin.note": "Note for the audit log (why; no secrets)",
    "admin.ttl": "The token is good for",
    "admin.ttl.hour": "1 hour",
    "admin.ttl.day": "1 day",
    "admin.ttl.week": "7 days",
    "admin.confirm": "Confirm",
    "admin.cancel": "Cancel",
    "admin.not_allowed": "{action} does not apply to {id}, which is {status}.",
    "admin.token.not_allowed": "{id} cannot get an enrolment token: it is enrolled already "
    "(it rotates its keys with istmo keys rotate) or not active.",
    # the token, once
    "admin.token.title": "Enrolment token for {id}",
    "admin.token.once": "This is the only time the token is shown. The broker keeps only "
    "its digest. Copy it now and hand it to the agency over a channel you trust.",
    "admin.token.label": "One-time enrolment token",
    "admin.token.expires": "Good until (UTC)",
    "admin.token.kid": "Directory key the agency pins",
    "admin.token.run": "On its own machine, the agency runs:",
    "admin.token.reload": "Reloading this page issues a new token and cancels this one.",
    # policy in force
    "admin.policy.title": "Policy in force",
    "admin.policy.adopted": "Adopted {when} UTC by {who}",
    "admin.policy.checkout": "The set shipped with the broker: no policy has been adopted "
    "here yet.",
    "admin.policy.files": "Files",
    "admin.policy.schema": "Schema: {name}, SHA-256 {digest}",
    "admin.policy.check": "Check a candidate…",
    "admin.policy.lines": "{n} lines",
    "admin.policy.adopted_now": "Policy {version} is in force (it was {previous}). Every "
    "relay switched to it.",
    # candidate
    "admin.cand.title": "Check a candidate policy",
    "admin.cand.help": "Paste the candidate, or load files from your computer. Each file "
    "follows a line '// ---- <file>' (schema.cedarschema, base.cedar or "
    "overrides/<name>.cedar); text without such a line is base.cedar. Files you leave out "
    "are taken from the set in force. Nothing is adopted at this step.",
    "admin.cand.text": "Candidate (at most {max} characters)",
    "admin.cand.files": "Or load files (.cedar, .cedarschema)",
    "admin.cand.files_help": "The files replace the text above.",
    "admin.cand.replace": "Replace the whole set (files left out are dropped; the schema is kept)",
    "admin.cand.last": "Simulate against the latest bulletins (at most {max})",
    "admin.cand.submit": "Validate and simulate",
    "admin.cand.no_schema": "The schema in force could not be found on this broker: include "
    "schema.cedarschema in the candidate.",
    # check result
    "admin.check.title": "Candidate checked",
    "admin.check.valid": "Valid: version {version}",
    "admin.check.same": "It is the set in force: nothing to adopt.",
    "admin.check.invalid": "Not valid: {n} problem(s). Nothing was adopted.",
    "admin.check.problems": "Problems",
    "admin.check.changed": "Files that differ from the set in force",
    "admin.check.unchanged": "No file differs from the set in force.",
    "admin.check.edit": "Edit the candidate",
    "admin.check.files": "The files that differ, with their line numbers",
    "admin.sim.title": "Simulation",
    "admin.sim.summary": "The latest {n} bulletins replayed under {active} (in force) and "
    "{candidate} (candidate): {changes} decision(s) would change.",
    "admin.sim.none": "No decision would change.",
    "admin.sim.by_agency": "Who would gain or lose access",
    "admin.sim.gains": "would gain",
    "admin.sim.loses": "would lose",
    "admin.sim.details": "Every decision that would change",
    "admin.sim.bulletin": "Bulletin",
    "admin.sim.originator": "Originator",
    "admin.sim.labels": "Labels",
    "admin.sim.agency": "Agency",
    "admin.sim.action": "Action",
    "admin.sim.change": "Change",
    "admin.sim.gain": "DENY → PERMIT",
    "admin.sim.lose": "PERMIT → DENY",
    "admin.sim.before": "Decided by (now)",
    "admin.sim.after": "Decided by (candidate)",
    "admin.sim.default_deny": "no grant (default deny)",
    "admin.sim.truncated": "The first {n} are listed.",
    "admin.adopt": "Adopt this version…",
    # adoption
    "admin.adopt.title": "Adopt policy {version}?",
    "admin.adopt.explain": "It replaces {active} for every relay at once and is recorded in "
    "the audit log under your identity. The set in force stays archived.",
    "admin.adopt.confirm": "Adopt {version}",
    "admin.adopt.changed": "The candidate is not the one that was checked (its version is "
    "now {version}). Check it again.",
    "admin.adopt.invalid": "The candidate was refused: {problems}",
    "admin.adopt.unavailable": "This broker cannot adopt policies here (no running stack); "
    "use istmo policy adopt.",
    # refusals
    "admin.bad_candidate": "The candidate cannot be read: {what}",
    "admin.unknown_agency": "There is no such agency.",
    "admin.rate_limited": "Too many checks in a short time; wait {wait} s and try again.",
    "admin.conflict": "Not done: {what}",
}

ES: dict[str, str] = {
    "admin.title": "Administración",
    "admin.intro": "Las agencias, sus claves y su estado, y la política vigente. Cada "
    "cambio pide confirmación y queda en el registro de auditoría con su identidad.",
    "admin.agencies": "Agencias",
    "admin.agencies_help": "Por Estado y sector: estado, claves; suspender, reactivar, "
    "revocar, fichas de alta.",
    "admin.policy": "Política",
    "admin.policy_help": "El conjunto de políticas vigente; verifique y simule un candidato "
    "antes de adoptarlo.",
    "admin.count.active": "activas",
    "admin.count.suspended": "suspendidas",
    "admin.count.revoked": "revocadas",
    "admin.count.unenrolled": "aún sin alta",
    "admin.version": "Versión",
    "admin.filter.place": "Estado o comunidad",
    "admin.filter.sector": "Sector",
    "admin.filter.status": "Situación",
    "admin.filter.any": "cualquiera",
    "admin.filter.apply": "Mostrar",
    "admin.filter.clear": "Borrar",
    "admin.none": "Ninguna agencia coincide.",
    "admin.shown": "{n} agencias mostradas.",
    "admin.col.id": "Agencia",
    "admin.col.name": "Nombre",
    "admin.col.sector": "Sector",
    "admin.col.status": "Situación",
    "admin.col.keys": "Claves de firma",
    "admin.col.rotated": "Última clave registrada (UTC)",
    "admin.col.clearance": "Habilitación",
    "admin.not_enrolled": "sin alta",
    "admin.keys_active": "{n} activas",
    "admin.sector.police": "policía",
    "admin.sector.military": "defensa",
    "admin.sector.foreign": "relaciones exteriores",
    "admin.sector.justice": "justicia",
    "admin.sector.regional-centre": "centro regional",
    "admin.sector.auditor": "auditoría",
    "admin.status.active": "activa",
    "admin.status.suspended": "suspendida",
    "admin.status.revoked": "revocada",
    "admin.agency": "Agencia {id}",
    "admin.back": "Todas las agencias",
    "admin.f.name": "Nombre",
    "admin.f.sector": "Sector",
    "admin.f.place": "Estado o comunidades",
    "admin.f.status": "Situación",
    "admin.f.clearance": "Habilitación",
    "admin.f.grade": "Acepta fuentes calificadas al menos",
    "admin.f.topics": "Temas que sigue",
    "admin.f.none": "ninguno",
    "admin.keys": "Claves",
    "admin.keys_help": "Solo se registran las mitades públicas. Compare una huella con la "
    "que la agencia lee en su propio almacén de claves antes de confiar en una clave.",
    "admin.k.kind": "Clave",
    "admin.k.kind.signing": "firma",
    "admin.k.kind.encryption": "cifrado",
    "admin.k.kind.nats": "usuario NATS",
    "admin.k.id": "Identificador",
    "admin.k.algorithm": "Algoritmo",
    "admin.k.fingerprint": "Huella (SHA-256)",
    "admin.k.created": "Registrada (UTC)",
    "admin.k.state": "Estado",
    "admin.k.current": "en uso",
    "admin.k.old": "se conserva para verificar boletines antiguos",
    "admin.k.revoked": "revocada {when}",
    "admin.k.none": "Sin claves: la agencia aún no se ha dado de alta.",
    "admin.actions": "Acciones",
    "admin.no_actions": "Ninguna acción es posible: la revocación es definitiva.",
    "admin.done.suspend": "{id} está suspendida. Su conexión se cerró; sus entregas esperan "
    "hasta que se reactive.",
    "admin.done.reinstate": "{id} está activa de nuevo; sus entregas retenidas llegan ahora.",
    "admin.done.revoke": "{id} está revocada, de forma definitiva.",
    "admin.not_applied": "El cambio quedó registrado, pero la pila en ejecución no confirmó "
    "haberlo aplicado; se aplicará en el próximo arranque.",
    "admin.do.suspend": "Suspender…",
    "admin.do.reinstate": "Reactivar…",
    "admin.do.revoke": "Revocar…",
    "admin.do.token": "Emitir una ficha de alta…",
    "admin.do.revoke_key": "Revocar…",
    "admin.do.revoke_key_of": "Revocar la clave {kid}",
    "admin.confirm.revoke_key": "¿Revocar una clave de firma de {id}?",
    "admin.explain.revoke_key": "Los boletines firmados con ella hasta ahora siguen siendo "
    "verificables; todo lo que firme desde ahora lo rechazan el relé y todos los SDK.",
    "admin.explain.last_key": "Es la única clave de firma activa de {id}: no podrá publicar "
    "hasta tener otra (istmo keys rotate, antes de revocar esta).",
    "admin.done.key": "La clave {kid} está revocada: lo que firme desde ahora se rechaza.",
    "admin.confirm.suspend": "¿Suspender {id}?",
    "admin.confirm.reinstate": "¿Reactivar {id}?",
    "admin.confirm.revoke": "¿Revocar {id}?",
    "admin.confirm.token": "¿Emitir una ficha de alta para {id}?",
    "admin.explain.suspend": "Desde ahora no puede publicar ni recibir: nats-server corta su "
    "conexión de inmediato, sus fichas de acceso y sesiones de consola dejan de servir, y "
    "los boletines ya encaminados a ella esperan en su cola hasta que se reactive.",
    "admin.explain.reinstate": "Puede publicar y recibir de nuevo; se entregan los boletines "
    "retenidos durante la suspensión.",
    "admin.explain.revoke": "La revocación es definitiva: la agencia no podrá reactivarse. "
    "Los boletines que firmó antes siguen siendo verificables.",
    "admin.explain.token": "Una ficha de un solo uso que permite a la agencia registrar sus "
    "claves públicas desde su propio equipo. Se muestra una vez, en la página siguiente, y "
    "nunca más; cualquier ficha anterior sin usar de esta agencia deja de servir.",
    "admin.note": "Nota para el registro de auditoría (motivo; sin secretos)",
    "admin.ttl": "La ficha vale durante",
    "admin.ttl.hour": "1 hora",
    "admin.ttl.day": "1 día",
    "admin.ttl.week": "7 días",
    "admin.confirm": "Confirmar",
    "admin.cancel": "Cancelar",
    "admin.not_allowed": "{action} no se aplica a {id}, que está {status}.",
    "admin.token.not_allowed": "{id} no puede recibir una ficha de alta: ya está dada de alta "
    "(rota sus claves con istmo keys rotate) o no está activa.",
    "admin.token.title": "Ficha de alta para {id}",
    "admin.token.once": "Esta es la única vez que se muestra la ficha. El intermediario solo "
    "guarda su resumen. Cópiela ahora y entréguela a la agencia por un canal de confianza.",
    "admin.token.label": "Ficha de alta de un solo uso",
    "admin.token.expires": "Válida hasta (UTC)",
    "admin.token.kid": "Clave del directorio que fija la agencia",
    "admin.token.run": "En su propio equipo, la agencia ejecuta:",
    "admin.token.reload": "Recargar esta página emite una ficha nueva y anula esta.",
    "admin.policy.title": "Política vigente",
    "admin.policy.adopted": "Adoptada el {when} UTC por {who}",
    "admin.policy.checkout": "El conjunto que trae el intermediario: aquí aún no se ha "
    "adoptado ninguna política.",
    "admin.policy.files": "Archivos",
    "admin.policy.schema": "Esquema: {name}, SHA-256 {digest}",
    "admin.policy.check": "Verificar un candidato…",
    "admin.policy.lines": "{n} líneas",
    "admin.policy.adopted_now": "La política {version} está vigente (antes {previous}). "
    "Todos los relés la aplican ya.",
    "admin.cand.title": "Verificar una política candidata",
    "admin.cand.help": "Pegue el candidato o cargue archivos de su equipo. Cada archivo va "
    "tras una línea '// ---- <archivo>' (schema.cedarschema, base.cedar u "
    "overrides/<nombre>.cedar); un texto sin esa línea es base.cedar. Los archivos que omita "
    "se toman del conjunto vigente. En este paso no se adopta nada.",
    "admin.cand.text": "Candidato (como máximo {max} caracteres)",
    "admin.cand.files": "O cargue archivos (.cedar, .cedarschema)",
    "admin.cand.files_help": "Los archivos reemplazan el texto de arriba.",
    "admin.cand.replace": "Reemplazar todo el conjunto (los archivos omitidos se descartan; "
    "el esquema se conserva)",
    "admin.cand.last": "Simular con los últimos boletines (como máximo {max})",
    "admin.cand.submit": "Validar y simular",
    "admin.cand.no_schema": "No se encontró el esquema vigente en este intermediario: "
    "incluya schema.cedarschema en el candidato.",
    "admin.check.title": "Candidato verificado",
    "admin.check.valid": "Válido: versión {version}",
    "admin.check.same": "Es el conjunto vigente: no hay nada que adoptar.",
    "admin.check.invalid": "No válido: {n} problema(s). No se adoptó nada.",
    "admin.check.problems": "Problemas",
    "admin.check.changed": "Archivos que difieren del conjunto vigente",
    "admin.check.unchanged": "Ningún archivo difiere del conjunto vigente.",
    "admin.check.edit": "Editar el candidato",
    "admin.check.files": "Los archivos que difieren, con sus números de línea",
    "admin.sim.title": "Simulación",
    "admin.sim.summary": "Los últimos {n} boletines, repetidos con {active} (vigente) y "
    "{candidate} (candidato): cambiarían {changes} decisión(es).",
    "admin.sim.none": "Ninguna decisión cambiaría.",
    "admin.sim.by_agency": "Quién ganaría o perdería acceso",
    "admin.sim.gains": "ganaría",
    "admin.sim.loses": "perdería",
    "admin.sim.details": "Cada decisión que cambiaría",
    "admin.sim.bulletin": "Boletín",
    "admin.sim.originator": "Emisor",
    "admin.sim.labels": "Etiquetas",
    "admin.sim.agency": "Agencia",
    "admin.sim.action": "Acción",
    "admin.sim.change": "Cambio",
    "admin.sim.gain": "DENEGAR → PERMITIR",
    "admin.sim.lose": "PERMITIR → DENEGAR",
    "admin.sim.before": "Decidido por (vigente)",
    "admin.sim.after": "Decidido por (candidato)",
    "admin.sim.default_deny": "ninguna concesión (denegación por defecto)",
    "admin.sim.truncated": "Se listan las primeras {n}.",
    "admin.adopt": "Adoptar esta versión…",
    "admin.adopt.title": "¿Adoptar la política {version}?",
    "admin.adopt.explain": "Reemplaza a {active} en todos los relés a la vez y queda en el "
    "registro de auditoría con su identidad. El conjunto vigente queda archivado.",
    "admin.adopt.confirm": "Adoptar {version}",
    "admin.adopt.changed": "El candidato no es el que se verificó (su versión ahora es "
    "{version}). Verifíquelo de nuevo.",
    "admin.adopt.invalid": "El candidato fue rechazado: {problems}",
    "admin.adopt.unavailable": "Este intermediario no puede adoptar políticas aquí (no hay "
    "pila en ejecución); use istmo policy adopt.",
    "admin.bad_candidate": "No se puede leer el candidato: {what}",
    "admin.unknown_agency": "No existe esa agencia.",
    "admin.rate_limited": "Demasiadas verificaciones seguidas; espere {wait} s e inténtelo "
    "de nuevo.",
    "admin.conflict": "No se hizo: {what}",
}

add_strings("en", EN)
add_strings("es", ES)
