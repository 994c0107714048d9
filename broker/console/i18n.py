"""English and Spanish for the console: a small dict catalog and language negotiation.

The language is the ``istmo_lang`` cookie if it names one we have, else the best of the
browser's ``Accept-Language`` (q-values honoured), else English. A missing Spanish string
falls back to the English one, and a missing key shows the key itself (so a typo is
visible, never an exception). Part 2 (administrator pages) adds its strings with
``add_strings`` at import time.
"""

from __future__ import annotations

__all__ = ["LANGS", "LANG_COOKIE", "add_strings", "negotiate", "translator"]

from collections.abc import Callable, Mapping

LANGS = ("en", "es")
LANG_COOKIE = "istmo_lang"
_MAX_ACCEPT = 400  # characters of Accept-Language read

_EN: dict[str, str] = {
    "app": "Istmo console",
    "skip": "Skip to content",
    "nav.log": "Audit log",
    "nav.integrity": "Integrity",
    "nav.charts": "Pictures",
    "nav.flow": "Bulletin flow",
    "nav.admin": "Administration",
    "nav.signout": "Sign out",
    "nav.signed_in_as": "Signed in as",
    "lang.switch": "Language",
    "lang.en": "English",
    "lang.es": "Español",
    "signin.title": "Sign in",
    "signin.intro": "The console signs you in with the same identity as the API: your "
    "agency's or administrator's keystore. On your machine, run:",
    "signin.after": "It prints a sign-in link that works once, within 60 seconds, and opens "
    "it in your browser.",
    "signin.dev": "Development login",
    "signin.dev_intro": "This broker runs under istmo up: sign in as a demo identity.",
    "signin.dev_as": "Sign in as",
    "signin.link_bad": "This sign-in link is not valid: it was used, expired or mistyped. "
    "Run istmo console login again.",
    "signin.out": "You are signed out.",
    "refused.title": "Not allowed",
    "refused.scope": "This page needs the scope {scope}; your identity {who} does not have "
    "it. The refusal is recorded in the audit log.",
    "refused.csrf": "The form could not be checked (its security token is missing or "
    "stale). Reload the page and try again. The refusal is recorded in the audit log.",
    "refused.expired": "Your session has ended. Sign in again.",
    "error.title": "Something is wrong",
    "error.bad_input": "The request is not valid: {what}",
    "error.not_found": "Not found: {what}",
    "error.rate": "Too many requests: try again in {seconds} s.",
    "home.title": "Welcome",
    "home.auditor": "Read and verify the audit log: entries, signed tree heads, pictures "
    "and the path of one bulletin.",
    "home.admin": "Manage agencies and policies.",
    "home.integrity": "Check that the log is whole: signed tree heads, consistency between "
    "two of them, and a full verification.",
    "home.charts": "Pictures of the traffic: bulletins per day, denials per agency, time to "
    "acknowledge. Empty until bulletins have been published.",
    "home.flow": "The path of one bulletin, from publication to each receipt: give its id. "
    "Empty until bulletins have been published.",
    "charts.top": "The chart shows the {shown} agencies with the most denials, of {total}; the "
    "table lists all of them.",
    "log.title": "Audit log",
    "log.filters": "Filters",
    "log.agency": "Agency",
    "log.state": "State",
    "log.sector": "Sector",
    "log.topic": "Topic",
    "log.type": "Event type",
    "log.decision": "Decision",
    "log.decision.permitted": "permitted",
    "log.decision.denied": "denied",
    "log.since": "From",
    "log.until": "Until",
    "log.any": "any",
    "log.apply": "Apply filters",
    "log.reset": "Clear",
    "log.index": "#",
    "log.time": "Time (UTC)",
    "log.actor": "Actor",
    "log.subject": "Subject",
    "log.reason": "Reason",
    "log.bulletin": "Bulletin",
    "log.none": "No entry matches these filters.",
    "log.newer": "Newer",
    "log.older": "Older",
    "log.page_of": "Entries {first} to {last}, newest first",
    "log.altered": "ALTERED",
    "log.altered_help": "The stored bytes of this entry do not hash to its stored leaf hash, "
    "or are not an audit event.",
    "entry.title": "Entry {index}",
    "entry.fields": "Fields",
    "entry.leaf": "Stored bytes (what the leaf hash covers)",
    "entry.proof": "Inclusion proof",
    "entry.head": "Signed tree head",
    "entry.checking": "Checking in your browser…",
    "entry.nojs": "The check runs in your browser and needs JavaScript.",
    "entry.verified": "VERIFIED: this entry is in the log the broker signed.",
    "entry.failed": "VERIFICATION FAILED: this entry is not what the log signed.",
    "entry.pending": "Not yet covered by a signed tree head: the sequencer has not signed "
    "a head that includes it.",
    "entry.steps": "What the browser checked",
    "entry.step.key": "The tree head names the pinned log key {kid}",
    "entry.step.sig": "Ed25519 signature of the tree head (size {size}) verifies",
    "entry.step.origin": "The tree head is of the log {origin}",
    "entry.step.leaf": "Leaf hash SHA-256(0x00 || stored bytes) computed",
    "entry.step.root": "Root recomputed from the leaf and {n} proof hashes equals the signed root",
    "entry.step.fail": "Failed: {what}",
    "entry.flow": "Path of this bulletin",
    "integrity.title": "Integrity",
    "integrity.latest": "Current signed tree head",
    "integrity.heads": "Signed tree heads",
    "integrity.size": "Size",
    "integrity.root": "Root hash",
    "integrity.signed_at": "Signed at (UTC)",
    "integrity.kid": "Key",
    "integrity.none": "The log has no signed tree head yet.",
    "integrity.verify": "Full verification",
    "integrity.verify_never": "No full verification has run since the broker started.",
    "integrity.verify_run": "Verify the whole log now",
    "integrity.verify_ok": "OK: {entries} entries and {heads} signed tree heads check out.",
    "integrity.verify_bad": "FAILED at entry {index}: {message}",
    "integrity.verify_at": "Last run {at}, {seconds} s, by {who}.",
    "integrity.no_key": "The log key is not available to this broker (no sequencer has run, "
    "or the database is not SQLite): nothing can be checked against it here.",
    "integrity.consistency": "Consistency between two tree heads",
    "integrity.old": "Older size",
    "integrity.new": "Newer size",
    "integrity.check": "Check consistency",
    "integrity.consistent": "CONSISTENT: the tree of size {new} extends the tree of size "
    "{old} ({n} proof hashes).",
    "integrity.inconsistent": "INCONSISTENT: {message}",
    "integrity.log_key": "Log key",
    "integrity.browser.ok": "Checked again in your browser: consistent.",
    "integrity.browser.bad": "Checked again in your browser: NOT CONSISTENT.",
    "integrity.browser.sigs": "Ed25519 signatures of both tree heads ({old} and {new}) verify",
    "integrity.browser.proof": "The {n} proof hashes rebuild both signed roots",
    "charts.title": "Pictures",
    "charts.days": "Last {days} days",
    "charts.per_day": "Bulletins per day by topic",
    "charts.denials": "Denials per agency and reason",
    "charts.ack": "Deliveries and receipts: time to acknowledge",
    "charts.table": "The same figures as a table",
    "charts.day": "Day",
    "charts.count": "Count",
    "charts.bulletins": "bulletins",
    "charts.delivered": "Delivered",
    "charts.received": "Received",
    "charts.unacknowledged": "Not acknowledged",
    "charts.median": "Median time to acknowledge",
    "charts.bucket": "Time to acknowledge",
    "charts.empty": "Nothing to show in this period.",
    "flow.title": "Bulletin flow",
    "flow.ask": "Bulletin id",
    "flow.show": "Show",
    "flow.unknown": "The log has no event for this bulletin.",
    "flow.originator": "Originator",
    "flow.accepted": "Accepted",
    "flow.rejected": "Rejected",
    "flow.candidates": "Decision per candidate recipient",
    "flow.recipient": "Recipient",
    "flow.decision": "Decision",
    "flow.policies": "Deciding policies",
    "flow.routed": "Routed",
    "flow.received": "Received",
    "flow.permitted": "permitted",
    "flow.denied": "denied",
    "flow.labels": "Labels",
    "flow.no": "—",
    "flow.summary": "{permitted} permitted, {denied} denied, {received} received",
}

_ES: dict[str, str] = {
    "app": "Consola de Istmo",
    "skip": "Ir al contenido",
    "nav.log": "Registro de auditoría",
    "nav.integrity": "Integridad",
    "nav.charts": "Gráficos",
    "nav.flow": "Recorrido de un boletín",
    "nav.admin": "Administración",
    "nav.signout": "Cerrar sesión",
    "nav.signed_in_as": "Sesión de",
    "lang.switch": "Idioma",
    "lang.en": "English",
    "lang.es": "Español",
    "signin.title": "Iniciar sesión",
    "signin.intro": "La consola usa la misma identidad que la API: el almacén de claves de "
    "su agencia o de su administrador. En su equipo, ejecute:",
    "signin.after": "Imprime un enlace de acceso que sirve una sola vez, durante 60 segundos, "
    "y lo abre en su navegador.",
    "signin.dev": "Acceso de desarrollo",
    "signin.dev_intro": "Este intermediario corre con istmo up: entre como una identidad de "
    "demostración.",
    "signin.dev_as": "Entrar como",
    "signin.link_bad": "Este enlace de acceso no es válido: ya se usó, caducó o está mal "
    "copiado. Ejecute istmo console login de nuevo.",
    "signin.out": "Ha cerrado la sesión.",
    "refused.title": "No permitido",
    "refused.scope": "Esta página requiere el ámbito {scope}; su identidad {who} no lo tiene. "
    "El rechazo queda en el registro de auditoría.",
    "refused.csrf": "No se pudo comprobar el formulario (falta su código de seguridad o "
    "caducó). Recargue la página e inténtelo de nuevo. El rechazo queda en el registro de "
    "auditoría.",
    "refused.expired": "Su sesión terminó. Inicie sesión de nuevo.",
    "error.title": "Algo no está bien",
    "error.bad_input": "La solicitud no es válida: {what}",
    "error.not_found": "No encontrado: {what}",
    "error.rate": "Demasiadas solicitudes: inténtelo de nuevo en {seconds} s.",
    "home.title": "Bienvenida",
    "home.auditor": "Lea y verifique el registro de auditoría: entradas, cabeceras de árbol "
    "firmadas, gráficos y el recorrido de un boletín.",
    "home.admin": "Gestione agencias y políticas.",
    "home.integrity": "Compruebe que el registro está completo: cabeceras de árbol firmadas, "
    "consistencia entre dos de ellas y una verificación completa.",
    "home.charts": "Gráficos del tráfico: boletines por día, denegaciones por agencia, tiempo "
    "hasta el acuse. Vacíos hasta que se publiquen boletines.",
    "home.flow": "El recorrido de un boletín, de la publicación a cada acuse: indique su id. "
    "Vacío hasta que se publiquen boletines.",
    "charts.top": "El gráfico muestra las {shown} agencias con más denegaciones, de {total}; la "
    "tabla las lista todas.",
    "log.title": "Registro de auditoría",
    "log.filters": "Filtros",
    "log.agency": "Agencia",
    "log.state": "Estado",
    "log.sector": "Sector",
    "log.topic": "Tema",
    "log.type": "Tipo de evento",
    "log.decision": "Decisión",
    "log.decision.permitted": "permitido",
    "log.decision.denied": "denegado",
    "log.since": "Desde",
    "log.until": "Hasta",
    "log.any": "cualquiera",
    "log.apply": "Aplicar filtros",
    "log.reset": "Limpiar",
    "log.index": "#",
    "log.time": "Hora (UTC)",
    "log.actor": "Actor",
    "log.subject": "Sujeto",
    "log.reason": "Motivo",
    "log.bulletin": "Boletín",
    "log.none": "Ninguna entrada coincide con estos filtros.",
    "log.newer": "Más recientes",
    "log.older": "Más antiguas",
    "log.page_of": "Entradas {first} a {last}, las más recientes primero",
    "log.altered": "ALTERADA",
    "log.altered_help": "Los bytes guardados de esta entrada no corresponden a su hash de "
    "hoja guardado, o no son un evento de auditoría.",
    "entry.title": "Entrada {index}",
    "entry.fields": "Campos",
    "entry.leaf": "Bytes guardados (lo que cubre el hash de hoja)",
    "entry.proof": "Prueba de inclusión",
    "entry.head": "Cabecera de árbol firmada",
    "entry.checking": "Comprobando en su navegador…",
    "entry.nojs": "La comprobación se hace en su navegador y necesita JavaScript.",
    "entry.verified": "VERIFICADA: esta entrada está en el registro que firmó el intermediario.",
    "entry.failed": "VERIFICACIÓN FALLIDA: esta entrada no es lo que el registro firmó.",
    "entry.pending": "Aún no la cubre una cabecera de árbol firmada: el secuenciador no ha "
    "firmado una cabecera que la incluya.",
    "entry.steps": "Lo que comprobó el navegador",
    "entry.step.key": "La cabecera nombra la clave del registro fijada {kid}",
    "entry.step.sig": "La firma Ed25519 de la cabecera (tamaño {size}) es válida",
    "entry.step.origin": "La cabecera es del registro {origin}",
    "entry.step.leaf": "Hash de hoja SHA-256(0x00 || bytes guardados) calculado",
    "entry.step.root": "La raíz recalculada con la hoja y {n} hashes de prueba es la raíz firmada",
    "entry.step.fail": "Falló: {what}",
    "entry.flow": "Recorrido de este boletín",
    "integrity.title": "Integridad",
    "integrity.latest": "Cabecera de árbol firmada actual",
    "integrity.heads": "Cabeceras de árbol firmadas",
    "integrity.size": "Tamaño",
    "integrity.root": "Hash raíz",
    "integrity.signed_at": "Firmada (UTC)",
    "integrity.kid": "Clave",
    "integrity.none": "El registro aún no tiene cabeceras de árbol firmadas.",
    "integrity.verify": "Verificación completa",
    "integrity.verify_never": "No se ha hecho ninguna verificación completa desde que arrancó "
    "el intermediario.",
    "integrity.verify_run": "Verificar todo el registro ahora",
    "integrity.verify_ok": "CORRECTO: {entries} entradas y {heads} cabeceras firmadas concuerdan.",
    "integrity.verify_bad": "FALLO en la entrada {index}: {message}",
    "integrity.verify_at": "Última ejecución {at}, {seconds} s, por {who}.",
    "integrity.no_key": "La clave del registro no está disponible en este intermediario (el "
    "secuenciador no ha corrido, o la base de datos no es SQLite): aquí no se puede comprobar "
    "nada con ella.",
    "integrity.consistency": "Consistencia entre dos cabeceras",
    "integrity.old": "Tamaño anterior",
    "integrity.new": "Tamaño posterior",
    "integrity.check": "Comprobar consistencia",
    "integrity.consistent": "CONSISTENTE: el árbol de tamaño {new} extiende el de tamaño "
    "{old} ({n} hashes de prueba).",
    "integrity.inconsistent": "INCONSISTENTE: {message}",
    "integrity.log_key": "Clave del registro",
    "integrity.browser.ok": "Comprobado de nuevo en su navegador: consistente.",
    "integrity.browser.bad": "Comprobado de nuevo en su navegador: NO CONSISTENTE.",
    "integrity.browser.sigs": "Las firmas Ed25519 de ambas cabeceras ({old} y {new}) son válidas",
    "integrity.browser.proof": "Los {n} hashes de prueba reconstruyen ambas raíces firmadas",
    "charts.title": "Gráficos",
    "charts.days": "Últimos {days} días",
    "charts.per_day": "Boletines por día y tema",
    "charts.denials": "Denegaciones por agencia y motivo",
    "charts.ack": "Entregas y acuses: tiempo hasta el acuse",
    "charts.table": "Las mismas cifras en una tabla",
    "charts.day": "Día",
    "charts.count": "Cantidad",
    "charts.bulletins": "boletines",
    "charts.delivered": "Entregados",
    "charts.received": "Recibidos",
    "charts.unacknowledged": "Sin acuse",
    "charts.median": "Mediana del tiempo hasta el acuse",
    "charts.bucket": "Tiempo hasta el acuse",
    "charts.empty": "Nada que mostrar en este periodo.",
    "flow.title": "Recorrido de un boletín",
    "flow.ask": "Identificador del boletín",
    "flow.show": "Mostrar",
    "flow.unknown": "El registro no tiene eventos de este boletín.",
    "flow.originator": "Emisor",
    "flow.accepted": "Aceptado",
    "flow.rejected": "Rechazado",
    "flow.candidates": "Decisión por destinatario candidato",
    "flow.recipient": "Destinatario",
    "flow.decision": "Decisión",
    "flow.policies": "Políticas que decidieron",
    "flow.routed": "Encaminado",
    "flow.received": "Recibido",
    "flow.permitted": "permitido",
    "flow.denied": "denegado",
    "flow.labels": "Etiquetas",
    "flow.no": "—",
    "flow.summary": "{permitted} permitidos, {denied} denegados, {received} recibidos",
}

_CATALOGS: dict[str, dict[str, str]] = {"en": _EN, "es": _ES}


def add_strings(lang: str, strings: Mapping[str, str]) -> None:
    """Add or replace strings of ``lang`` (``en`` or ``es``); for other console modules."""
    if lang not in _CATALOGS:
        raise ValueError(f"no catalog for language {lang!r}")
    _CATALOGS[lang].update(strings)


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    """The language to answer in: the cookie's, else the browser's best, else English."""
    if cookie in LANGS:
        return cookie
    best, best_q = "en", 0.0
    for i, part in enumerate((accept_language or "")[:_MAX_ACCEPT].split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        # Earlier tags win ties; a tiny penalty per position keeps that with equal q.
        score = q - i * 1e-6
        if primary in LANGS and q > 0 and score > best_q:
            best, best_q = primary, score
    return best


def translator(lang: str) -> Callable[..., str]:
    """``_("key", name=value)`` in ``lang``, with English as the fallback."""
    catalog = _CATALOGS.get(lang, _EN)

    def gettext(key: str, **values: object) -> str:
        text = catalog.get(key) or _EN.get(key) or key
        if values:
            try:
                return text.format(**values)
            except (KeyError, IndexError, ValueError):
                return text
        return text

    return gettext
