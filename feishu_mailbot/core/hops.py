"""The hops between the bot and Feishu or the relay, and what a failing one usually means.

`feishu-mailbot doctor` walks each path hop by hop and stops a path at its
first failure; the daemon names the same hop when its long connection fails.
Both say it in these words, so a journal line and the doctor's line match.
The causes are the old bot's troubleshooting guide made specific: its first
cause ("公司网络、防火墙、代理、VPN阻止WebSocket长连接") is here split into the hop
where it shows (a firewall drops TCP, a proxy refuses CONNECT or wants
credentials, inspects TLS, or drops the WebSocket upgrade).
"""

from __future__ import annotations

from dataclasses import dataclass

FEISHU = "Feishu"
SMTP = "SMTP"
DATABASE = "DB"  # only when `database:` is configured
IMAP = "IMAP"  # only when `inbound:` is configured

#: Each path's hops, in the order they are walked.
FEISHU_HOPS = (
    "config",
    "DNS",
    "TCP",
    "proxy CONNECT",
    "TLS",
    "tenant token",
    "endpoint",
    "WebSocket upgrade",
    "pong",
    "bot info",
    "chats",
    "reply scopes",  # only with `inbound:`
)
SMTP_HOPS = ("DNS", "TCP", "TLS", "greeting", "EHLO", "STARTTLS", "AUTH")
DATABASE_HOPS = ("connect", "schema")
IMAP_HOPS = ("mailbox",)

#: What a failure usually means, and what to do; `{target}` is the host:port of the hop.
CAUSES = {
    "dns": "the name does not resolve here: check the DNS (/etc/resolv.conf); behind a "
    "company proxy only the proxy resolves outside names: set feishu.proxy",
    "tcp": "a firewall drops or refuses the connection, or nothing listens there: allow "
    "outbound TCP to {target}, or go through the company's proxy (feishu.proxy)",
    "proxy-auth": "the proxy wants credentials, or other ones (HTTP 407 or 401): put the user in "
    "feishu.proxy (http://user@host:port) and the password in feishu.proxy_password_file",
    "proxy-refused": "the proxy will not tunnel to {target}: ask its admin to allow "
    "CONNECT to the Feishu hosts on port 443 (open.feishu.cn and the long-connection host)",
    "tls-untrusted": "the certificate is issued by a CA this machine does not trust: a "
    "TLS-inspecting proxy or firewall; put that CA's certificate (PEM) in feishu.ca_file",
    "tls": "the TLS handshake failed: a proxy or firewall in the way, or the wrong port",
    "credentials": "Feishu refused the app's credentials: check feishu.app_id and "
    "feishu.app_secret (developer console → Credentials & Basic Info)",
    "endpoint": "Feishu gave no long-connection address: in the developer console, set "
    "Events & Callbacks → subscription mode to 'persistent connection' and publish a version",
    "websocket": "a firewall or proxy may be blocking WebSocket: allow WebSocket to "
    "{target}, or route it through a proxy that tunnels it (feishu.proxy)",
    "pong": "the WebSocket opened but Feishu's answer to a ping did not come back: a proxy "
    "or firewall that buffers or cuts WebSocket frames (the old bot's 'keepalive ping "
    "timeout')",
    "bot": "the app has no bot: enable the Bot capability (应用能力 → 机器人) and publish "
    "a new version",
    "scopes": "the app lacks a scope: add im:message and im:message.group_msg (to get "
    "every group message, not only @-mentions) and publish a new version",
    "reply-scopes": "replies by mail need the app to send as the bot and upload images: add "
    "im:message:send_as_bot (or im:message) and im:resource, and publish a new version",
    "chats": "the bot is not in an allowlisted chat: add it there (群设置 → 群机器人), or "
    "correct the id under chats: (feishu-mailbot chats lists where it is)",
    "smtp-dns": "the relay's name does not resolve here: check smtp.host and the DNS "
    "(/etc/resolv.conf); SMTP connects directly, never through feishu.proxy, so this "
    "machine itself must resolve it",
    "smtp-tcp": "a firewall drops or refuses the connection, or nothing listens there: "
    "check smtp.host and smtp.port, and that outbound TCP to {target} is allowed (SMTP "
    "connects directly, never through feishu.proxy; many networks block port 25)",
    "smtp-greeting": "the relay did not greet: the wrong port or security (465 is tls, 587 "
    "starttls), or a firewall in the way",
    "smtp-tls-untrusted": "the relay's certificate is issued by a CA this machine does not "
    "trust: put it (PEM) in smtp.ca_file, or pin the certificate with smtp.tls_fingerprint",
    "smtp-pin": "the relay's certificate is not the one smtp.tls_fingerprint names: the "
    "certificate was renewed (pin the new one) or someone is in between",
    "smtp-tls-cert": "the relay's certificate does not fit (expired, not yet valid, or "
    "made out to other names than smtp.host): set smtp.host to a name it holds, check "
    "this machine's clock, or pin the certificate with smtp.tls_fingerprint",
    "smtp-tls": "the TLS handshake failed: the wrong port or security setting (465 is tls, "
    "587 starttls)",
    "smtp-starttls": "the relay did not offer STARTTLS: the wrong port or security (465 is "
    "tls), or a firewall that inspects SMTP and strips STARTTLS; the bot never falls back "
    "to cleartext",
    "smtp-auth": "the relay refused the login: check smtp.username and the password "
    "(smtp.password or smtp.password_file)",
    "smtp": "the relay refused: see its reply",
    "db-unreachable": "the database server does not answer: check database.url's host and "
    "port, that PostgreSQL listens there (listen_addresses) and that TCP to it is allowed",
    "db-login": "PostgreSQL refused the login: check the user in database.url, the password "
    "(database.password_file, or ~/.pgpass) and a pg_hba.conf line for this host",
    "db-schema": "the database is not one this release can use: see the detail",
    "db-driver": "PostgreSQL's driver is not installed on this host: apt install "
    "python3-psycopg2 (the package recommends it)",
    "imap": "the bot's mailbox cannot be read: check inbound.imap (host, port, security, "
    "username, password); 163, 126 and QQ mailboxes want IMAP switched on in their web "
    "settings and an authorization code (授权码) as the password; a missing folder must be "
    "created",
    "timeout": "no answer within the time given: something in between drops the traffic",
}


@dataclass(frozen=True)
class Hop:
    """One hop walked: `detail` is what was found (an address, an issuer) or what went
    wrong; a failed one has a `cause` key into CAUSES and the `target` it names."""

    path: str
    name: str
    ok: bool
    ms: float
    detail: str
    cause: str = ""
    target: str = ""

    def line(self) -> str:
        state = "ok" if self.ok else "FAILED"
        return f"{self.path:<6}  {self.name:<17}  {state:<6}  {self.ms:>6.0f} ms  {self.detail}"

    def advice(self) -> str:
        """What it usually means and what to do: empty for a hop that worked."""
        if self.ok or not self.cause:
            return ""
        return CAUSES[self.cause].format(target=self.target or "it")

    def sentence(self) -> str:
        """The failure as one line for the journal and STATUS=."""
        where = f" to {self.target}" if self.target and self.target not in self.detail else ""
        advice = self.advice()
        return (
            f"{self.name}{where} {self.detail}"
            + (f": {advice}" if advice else "")
            + ("; run feishu-mailbot doctor")
        )
