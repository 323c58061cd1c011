#!/usr/bin/env python3
"""Writes the MIME corpus: NAME.eml (the exact bytes) and NAME.toml (what
the parser must extract) for each case below.

The expected values are stated here by hand: the text that was encoded, not
what any parser printed. Non-ASCII bytes come from Python's own codecs
(ISO-2022-JP, GB2312, Latin-1), the hash from hashlib. Run it from anywhere:

    python3 tests/corpus/make_corpus.py

A case can also be added by hand: drop NAME.eml and NAME.toml next to the
others; tests/it/mime.rs reads every pair (its module docs list the fields).
"""

import base64
import hashlib
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# The mailbox the hash is computed for (what `new_mail.to` would hold).
HASH_TO = "someone@example.com"

FIELDS = ["from", "to", "date", "message_id", "subject", "body", "charset",
          "content_type", "has_attach"]


def crlf(text):
    """Header and body lines written with LF here, sent with CRLF."""
    return text.replace("\n", "\r\n")


def b64(data, width=76):
    enc = base64.b64encode(data).decode("ascii")
    return "".join(enc[i:i + width] + "\r\n" for i in range(0, len(enc), width))


def toml_str(s):
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u%04X" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def write(name, about, raw, **expected):
    assert sorted(expected) == sorted(FIELDS), name
    digest = hashlib.md5(
        (HASH_TO + expected["from"] + expected["subject"] + expected["body"]).encode("utf-8")
    ).hexdigest()
    with open(os.path.join(HERE, name + ".eml"), "wb") as f:
        f.write(raw)
    lines = ["# " + line for line in about.strip().splitlines()]
    for key in FIELDS:
        value = expected[key]
        if isinstance(value, bool):
            lines.append("%s = %s" % (key, "true" if value else "false"))
        else:
            lines.append("%s = %s" % (key, toml_str(value)))
    lines.append("hash_to = %s" % toml_str(HASH_TO))
    lines.append("hash = %s" % toml_str(digest))
    with open(os.path.join(HERE, name + ".toml"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


DEFAULTS = dict(charset="ISO-8859-1", content_type="text/plain")

# --- multipart/alternative: the HTML part wins ----------------------------
html = "<html><body><p>Café figures: <b>up 4%</b></p></body></html>\r\n"
write(
    "alternative",
    "multipart/alternative, text then quoted-printable HTML: the body is the\n"
    "decoded HTML, with the HTML part's charset and content type.",
    crlf(
        "From: Alice Example <alice@sender.test>\n"
        "To: bob@example.com\n"
        "Subject: Quarterly figures\n"
        "Date: Tue, 5 Mar 2024 09:15:00 +0100\n"
        "Message-ID: <alt-1@sender.test>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="alt-b1"\n'
        "\n"
        "This is a multi-part message in MIME format.\n"
        "\n"
        "--alt-b1\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "Content-Transfer-Encoding: 7bit\n"
        "\n"
        "Cafe figures: up 4%\n"
        "\n"
        "--alt-b1\n"
        'Content-Type: text/html; charset="UTF-8"\n'
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "<html><body><p>Caf=C3=A9 figures: <b>up 4=25</b></p></body></html>\n"
        "\n"
        "--alt-b1--\n"
    ).encode("ascii"),
    **{"from": "alice@sender.test"},
    to="bob@example.com",
    date="2024-03-05T09:15:00+01:00",
    message_id="alt-1@sender.test",
    subject="Quarterly figures",
    body=html,
    charset="UTF-8",
    content_type="text/html",
    has_attach=False,
)

# --- base64 HTML in ISO-8859-1 ----------------------------------------------
html = ("<html><head><title>Grüße</title></head>\r\n"
        "<body><p>Herzliche Grüße aus Köln – schöne Feiertage!</p></body></html>\r\n")
html = html.replace("–", "-")  # Latin-1 has no en dash
write(
    "base64_html",
    "Alternative with a base64 HTML part in ISO-8859-1: decoded from base64,\n"
    "then converted from Latin-1 to UTF-8.",
    crlf(
        "From: news@shop.test\n"
        "To: kunde@example.com\n"
        "Subject: Frohe Feiertage\n"
        "Date: Wed, 17 Jan 2024 23:05:09 -0500\n"
        "Message-ID: <b64.20240117@shop.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/alternative;\n"
        "\tboundary=\"==b64==\"\n"
        "\n"
        "--==b64==\n"
        "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
    ).encode("ascii")
    + b64("Herzliche Grüße aus Köln\r\n".encode("latin-1")).encode("ascii")
    + crlf(
        "\n"
        "--==b64==\n"
        "Content-Type: text/html; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
    ).encode("ascii")
    + b64(html.encode("latin-1")).encode("ascii")
    + crlf("\n--==b64==--\n").encode("ascii"),
    **{"from": "news@shop.test"},
    to="kunde@example.com",
    date="2024-01-17T23:05:09-05:00",
    message_id="b64.20240117@shop.test",
    subject="Frohe Feiertage",
    body=html,
    charset="iso-8859-1",
    content_type="text/html",
    has_attach=False,
)

# --- ISO-8859-1 quoted-printable, plain only ------------------------------
write(
    "latin1_qp_plain",
    "A single text/plain part in ISO-8859-1, quoted-printable, with a soft\n"
    "line break: decoded to UTF-8 with CRLF line ends kept.",
    crlf(
        "From: Jean <jean@exemple.test>\n"
        "To: marie@example.com\n"
        "Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?=\n"
        "Date: Fri, 1 Nov 2024 08:00:00 +0100\n"
        "Message-ID: <qp-latin1@exemple.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=ISO-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Ol=E9, voil=E0 le caf=E9 cr=E8me.\n"
        "Sch=F6ne Gr=FC=DFe=\n"
        " aus M=FCnchen\n"
    ).encode("ascii"),
    **{"from": "jean@exemple.test"},
    to="marie@example.com",
    date="2024-11-01T08:00:00+01:00",
    message_id="qp-latin1@exemple.test",
    subject="Café crème",
    body="Olé, voilà le café crème.\r\nSchöne Grüße aus München\r\n",
    charset="ISO-8859-1",
    content_type="text/plain",
    has_attach=False,
)

# --- ISO-2022-JP encoded words ----------------------------------------------
w1 = base64.b64encode("会議の予定".encode("iso-2022-jp")).decode("ascii")
w2 = base64.b64encode("について".encode("iso-2022-jp")).decode("ascii")
jp_body = "明日の会議は十時からです。\r\nよろしくお願いします。\r\n"
write(
    "iso2022jp_subject",
    "Subject in two ISO-2022-JP B encoded words across a fold (the space\n"
    "between adjacent encoded words is dropped, RFC 2047 section 6.2), and a\n"
    "7-bit ISO-2022-JP body: both decoded to UTF-8.",
    crlf(
        "From: =?ISO-2022-JP?B?"
        + base64.b64encode("田中".encode("iso-2022-jp")).decode("ascii")
        + "?= <tanaka@example.jp>\n"
        "To: suzuki@example.com\n"
        "Subject: Re: =?ISO-2022-JP?B?" + w1 + "?=\n"
        " =?ISO-2022-JP?B?" + w2 + "?=\n"
        "Date: Mon, 8 Apr 2024 17:30:00 +0900\n"
        "Message-ID: <jp.0408@example.jp>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=ISO-2022-JP\n"
        "Content-Transfer-Encoding: 7bit\n"
        "\n"
    ).encode("ascii")
    + jp_body.encode("iso-2022-jp"),
    **{"from": "tanaka@example.jp"},
    to="suzuki@example.com",
    date="2024-04-08T17:30:00+09:00",
    message_id="jp.0408@example.jp",
    subject="Re: 会議の予定について",
    body=jp_body,
    charset="ISO-2022-JP",
    content_type="text/plain",
    has_attach=False,
)

# --- GB2312 encoded words ---------------------------------------------------
gb_subject = "欢迎使用我们的服务"
gb_body = "谢谢您的注册。\r\n"
write(
    "gb2312_subject",
    "Subject as a GB2312 B encoded word, body as a base64 GB2312 text part:\n"
    "both decoded to UTF-8.",
    crlf(
        "From: service@example.cn\n"
        "To: user@example.com\n"
        "Subject: =?GB2312?B?"
        + base64.b64encode(gb_subject.encode("gb2312")).decode("ascii")
        + "?=\n"
        "Date: Thu, 15 Feb 2024 12:00:00 +0800\n"
        "Message-ID: <gb.0215@example.cn>\n"
        "MIME-Version: 1.0\n"
        'Content-Type: text/plain; charset="gb2312"\n'
        "Content-Transfer-Encoding: base64\n"
        "\n"
    ).encode("ascii")
    + b64(gb_body.encode("gb2312")).encode("ascii"),
    **{"from": "service@example.cn"},
    to="user@example.com",
    date="2024-02-15T12:00:00+08:00",
    message_id="gb.0215@example.cn",
    subject=gb_subject,
    body=gb_body,
    charset="gb2312",
    content_type="text/plain",
    has_attach=False,
)

# --- nested: mixed > alternative > related --------------------------------
html = "<html><body><p>“Quoted” text and <img src=\"cid:logo@x\"></p></body></html>"
png = bytes([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) + bytes(range(40))
pdf = b"%PDF-1.4\n% not a real document\n%%EOF\n"
write(
    "nested",
    "mixed > (alternative > (plain, related > (HTML, inline image)), PDF\n"
    "attachment): the body is the windows-1252 quoted-printable HTML deep\n"
    "inside; the PDF makes has_attach true.",
    crlf(
        "From: \"Newsletter\" <letters@news.test>\n"
        "To: reader@example.com\n"
        "Subject: Nested parts\n"
        "Date: Sat, 6 Jul 2024 10:20:30 +0000\n"
        "Message-ID: <nested-7@news.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=outer\n"
        "\n"
        "--outer\n"
        "Content-Type: multipart/alternative; boundary=\"middle\"\n"
        "\n"
        "--middle\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "\"Quoted\" text\n"
        "--middle\n"
        "Content-Type: multipart/related; boundary=\"inner\"; type=\"text/html\"\n"
        "\n"
        "--inner\n"
        "Content-Type: text/html; charset=windows-1252\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "<html><body><p>=93Quoted=94 text and <img src=3D\"cid:logo@x\"></p></body=\n"
        "></html>\n"
        "--inner\n"
        "Content-Type: image/png\n"
        "Content-Transfer-Encoding: base64\n"
        "Content-ID: <logo@x>\n"
        "Content-Disposition: inline\n"
        "\n"
    ).encode("ascii")
    + b64(png).encode("ascii")
    + crlf(
        "--inner--\n"
        "\n"
        "--middle--\n"
        "\n"
        "--outer\n"
        "Content-Type: application/pdf; name=\"terms.pdf\"\n"
        "Content-Transfer-Encoding: base64\n"
        "Content-Disposition: attachment; filename=\"terms.pdf\"\n"
        "\n"
    ).encode("ascii")
    + b64(pdf).encode("ascii")
    + crlf("--outer--\n").encode("ascii"),
    **{"from": "letters@news.test"},
    to="reader@example.com",
    date="2024-07-06T10:20:30Z",
    message_id="nested-7@news.test",
    subject="Nested parts",
    body=html,
    charset="windows-1252",
    content_type="text/html",
    has_attach=True,
)

# --- attachments are never the body ---------------------------------------
write(
    "attachment",
    "mixed: a plain body, an HTML file attached (Content-Disposition:\n"
    "attachment) and a binary attachment: the body is the plain text, not the\n"
    "attached HTML; has_attach is true.",
    crlf(
        "From: reports@corp.test\n"
        "To: boss@example.com\n"
        "Subject: Weekly report\n"
        "Date: Mon, 2 Sep 2024 07:00:00 +0200\n"
        "Message-ID: <report-36@corp.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"rpt\"\n"
        "\n"
        "--rpt\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "See the attached report — 3 pages.\n"
        "\n"
        "--rpt\n"
        "Content-Type: text/html; charset=utf-8; name=\"report.html\"\n"
        "Content-Disposition: attachment; filename=\"report.html\"\n"
        "\n"
        "<html><body><h1>Report</h1></body></html>\n"
        "\n"
        "--rpt\n"
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename=\"data.bin\"\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "AAECA/8=\n"
        "--rpt--\n"
    ).encode("utf-8"),
    **{"from": "reports@corp.test"},
    to="boss@example.com",
    date="2024-09-02T07:00:00+02:00",
    message_id="report-36@corp.test",
    subject="Weekly report",
    body="See the attached report — 3 pages.\r\n",
    charset="utf-8",
    content_type="text/plain",
    has_attach=True,
)

# --- an empty HTML part does not win ----------------------------------------
write(
    "empty_html",
    "alternative with a plain part and an HTML part holding only whitespace:\n"
    "the reference takes HTML only when it is non-empty, so the body is the\n"
    "plain text.",
    crlf(
        "From: bot@alerts.test\n"
        "To: ops@example.com\n"
        "Subject: Disk almost full\n"
        "Date: Tue, 10 Dec 2024 03:04:05 +0000\n"
        "Message-ID: <alert-99@alerts.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/alternative; boundary=\"e\"\n"
        "\n"
        "--e\n"
        "Content-Type: text/plain; charset=US-ASCII\n"
        "\n"
        "Disk /var is 97% full.\n"
        "\n"
        "--e\n"
        "Content-Type: text/html; charset=US-ASCII\n"
        "\n"
        "   \n"
        "\t\n"
        "\n"
        "--e--\n"
    ).encode("ascii"),
    **{"from": "bot@alerts.test"},
    to="ops@example.com",
    date="2024-12-10T03:04:05Z",
    message_id="alert-99@alerts.test",
    subject="Disk almost full",
    body="Disk /var is 97% full.\r\n",
    charset="US-ASCII",
    content_type="text/plain",
    has_attach=False,
)

# --- broken boundaries --------------------------------------------------------
after_header = crlf(
    "--other\n"
    "Content-Type: text/plain\n"
    "\n"
    "The sender's software used the wrong boundary.\n"
    "--other--\n"
)
write(
    "boundary_never_used",
    "multipart/mixed declares boundary=\"declared\" but the parts use\n"
    "\"--other\": no part can be found, so the body is everything after the\n"
    "header with the defaults, and nothing is an attachment.",
    crlf(
        "From: broken@mailer.test\n"
        "To: victim@example.com\n"
        "Subject: Wrong boundary\n"
        "Date: Wed, 3 Jan 2024 11:11:11 +0000\n"
        "Message-ID: <wrong-boundary@mailer.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"declared\"\n"
        "\n"
    ).encode("ascii")
    + after_header.encode("ascii"),
    **{"from": "broken@mailer.test"},
    to="victim@example.com",
    date="2024-01-03T11:11:11Z",
    message_id="wrong-boundary@mailer.test",
    subject="Wrong boundary",
    body=after_header,
    has_attach=False,
    **DEFAULTS,
)

write(
    "boundary_unclosed",
    "alternative whose closing delimiter never comes (the message was cut\n"
    "short): the last part runs to the end of the message and is still the\n"
    "HTML body.",
    crlf(
        "From: cut@mailer.test\n"
        "To: victim@example.com\n"
        "Subject: Cut short\n"
        "Date: Wed, 3 Jan 2024 11:12:13 +0000\n"
        "Message-ID: <cut-short@mailer.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/alternative; boundary=\"cut\"\n"
        "\n"
        "--cut\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "\n"
        "plain version\n"
        "--cut\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        "<p>html version</p>\n"
    ).encode("ascii"),
    **{"from": "cut@mailer.test"},
    to="victim@example.com",
    date="2024-01-03T11:12:13Z",
    message_id="cut-short@mailer.test",
    subject="Cut short",
    body="<p>html version</p>\r\n",
    charset="utf-8",
    content_type="text/html",
    has_attach=False,
)

html = "<p>Cut inside <b>two</b> open multiparts.</p>\r\n"
write(
    "unclosed_nested_base64",
    "mixed > alternative > (plain, base64 HTML), cut short before either\n"
    "closing delimiter: both multiparts are closed for the sender, innermost\n"
    "first, so the HTML is base64-decoded rather than kept as raw base64.",
    crlf(
        "From: cut2@mailer.test\n"
        "To: victim@example.com\n"
        "Subject: Cut twice\n"
        "Date: Wed, 3 Jan 2024 11:14:15 +0000\n"
        "Message-ID: <cut-twice@mailer.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"m\"\n"
        "\n"
        "--m\n"
        "Content-Type: multipart/alternative; boundary=\"a\"\n"
        "\n"
        "--a\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "Cut inside two open multiparts.\n"
        "--a\n"
        "Content-Type: text/html; charset=us-ascii\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
    ).encode("ascii")
    + b64(html.encode("ascii")).encode("ascii"),
    **{"from": "cut2@mailer.test"},
    to="victim@example.com",
    date="2024-01-03T11:14:15Z",
    message_id="cut-twice@mailer.test",
    subject="Cut twice",
    body=html,
    charset="us-ascii",
    content_type="text/html",
    has_attach=False,
)

# --- no MIME at all -------------------------------------------------------------
body = crlf("Hello,\n\nThis message has no MIME headers at all.\n\n-- \nA. Sender\n")
write(
    "no_mime",
    "A plain RFC 5322 message without MIME-Version or Content-Type: the body\n"
    "is the text after the header, charset and content type the defaults.",
    crlf(
        "Return-Path: <a.sender@old.test>\n"
        "From: a.sender@old.test\n"
        "To: friend@example.com\n"
        "Subject: Plain old mail\n"
        "Date: Thu, 1 Jan 1998 00:00:00 -0800\n"
        "Message-ID: <19980101000000.AA01@old.test>\n"
        "\n"
    ).encode("ascii")
    + body.encode("ascii"),
    **{"from": "a.sender@old.test"},
    to="friend@example.com",
    date="1998-01-01T00:00:00-08:00",
    message_id="19980101000000.AA01@old.test",
    subject="Plain old mail",
    body=body,
    has_attach=False,
    **DEFAULTS,
)

# --- raw 8-bit in headers -------------------------------------------------------
write(
    "raw_utf8_headers",
    "Unencoded UTF-8 in Subject and From (as SMTPUTF8 clients send), body\n"
    "declared UTF-8 and sent 8bit: kept as is.",
    crlf(
        "From: Jürgen Müller <jm@bücher.test>\n"
        "To: leser@example.com\n"
        "Subject: Grüße — ünïcödé ✓ 你好\n"
        "Date: Sun, 14 Jul 2024 14:14:14 +0200\n"
        "Message-ID: <utf8-raw@buecher.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Straße, Größe, naïve café.\n"
    ).encode("utf-8"),
    **{"from": "jm@bücher.test"},
    to="leser@example.com",
    date="2024-07-14T14:14:14+02:00",
    message_id="utf8-raw@buecher.test",
    subject="Grüße — ünïcödé ✓ 你好",
    body="Straße, Größe, naïve café.\r\n",
    charset="utf-8",
    content_type="text/plain",
    has_attach=False,
)

write(
    "raw_latin1_headers",
    "Unencoded ISO-8859-1 bytes in the Subject and an undeclared Latin-1 body:\n"
    "bytes that are not UTF-8 are read in the default charset, ISO-8859-1.",
    crlf(
        "From: Andr\xe9 <andre@vieux.test>\n"
        "To: ami@example.com\n"
        "Subject: D\xe9j\xe0 vu \xe0 la caf\xe9t\xe9ria\n"
        "Date: Mon, 5 Feb 2024 06:07:08 +0100\n"
        "Message-ID: <latin1-raw@vieux.test>\n"
        "\n"
        "Tr\xe8s cher ami, \xe7a va?\n"
    ).encode("latin-1"),
    **{"from": "andre@vieux.test"},
    to="ami@example.com",
    date="2024-02-05T06:07:08+01:00",
    message_id="latin1-raw@vieux.test",
    subject="Déjà vu à la cafétéria",
    body="Très cher ami, ça va?\r\n",
    has_attach=False,
    **DEFAULTS,
)

write(
    "latin1_undeclared_part",
    "mixed: a text/plain part with no charset parameter, quoted-printable\n"
    "Latin-1 bytes, and a zip attachment: the body is read in the default\n"
    "charset.",
    crlf(
        "From: agence@immo.test\n"
        "To: client@example.com\n"
        "Subject: Photos\n"
        "Date: Thu, 7 Mar 2024 15:16:17 +0100\n"
        "Message-ID: <photos-3@immo.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=\"zz\"\n"
        "\n"
        "--zz\n"
        "Content-Type: text/plain\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Fa=E7ade r=E9nov=E9e, voir pi=E8ce jointe.\n"
        "\n"
        "--zz\n"
        "Content-Type: application/zip; name=photos.zip\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\n"
        "--zz--\n"
    ).encode("ascii"),
    **{"from": "agence@immo.test"},
    to="client@example.com",
    date="2024-03-07T15:16:17+01:00",
    message_id="photos-3@immo.test",
    subject="Photos",
    body="Façade rénovée, voir pièce jointe.\r\n",
    has_attach=True,
    **DEFAULTS,
)

write(
    "unknown_charset",
    "charset=unknown-8bit (a label no decoder knows) on Latin-1 bytes: the\n"
    "declared label is recorded, the bytes are read as ISO-8859-1.",
    crlf(
        "From: old@relay.test\n"
        "To: you@example.com\n"
        "Subject: Ready\n"
        "Date: Fri, 8 Mar 2024 09:00:00 +0000\n"
        "Message-ID: <ready@relay.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=unknown-8bit\n"
        "Content-Transfer-Encoding: 8bit\n"
        "\n"
        "Pr\xeat \xe0 partir.\n"
    ).encode("latin-1"),
    **{"from": "old@relay.test"},
    to="you@example.com",
    date="2024-03-08T09:00:00Z",
    message_id="ready@relay.test",
    subject="Ready",
    body="Prêt à partir.\r\n",
    charset="unknown-8bit",
    content_type="text/plain",
    has_attach=False,
)

write(
    "related_inline_image",
    "multipart/related: HTML and an image it shows inline (Content-Disposition:\n"
    "inline). Following RFC 8621's hasAttachment, an inline part is not an\n"
    "attachment.",
    crlf(
        "From: card@greetings.test\n"
        "To: friend@example.com\n"
        "Subject: A card for you\n"
        "Date: Tue, 14 Feb 2023 08:00:00 +0100\n"
        "Message-ID: <card-214@greetings.test>\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/related; boundary=\"rel\"; type=\"text/html\"\n"
        "\n"
        "--rel\n"
        "Content-Type: text/html; charset=utf-8\n"
        "\n"
        "<p>♥ <img src=\"cid:heart\"></p>\n"
        "--rel\n"
        "Content-Type: image/gif\n"
        "Content-ID: <heart>\n"
        "Content-Disposition: inline\n"
        "Content-Transfer-Encoding: base64\n"
        "\n"
        "R0lGODlhAQABAAAAACw=\n"
        "--rel--\n"
    ).encode("utf-8"),
    **{"from": "card@greetings.test"},
    to="friend@example.com",
    date="2023-02-14T08:00:00+01:00",
    message_id="card-214@greetings.test",
    subject="A card for you",
    body="<p>♥ <img src=\"cid:heart\"></p>",
    charset="utf-8",
    content_type="text/html",
    has_attach=False,
)

# --- degenerate shapes ----------------------------------------------------------
write(
    "empty_body",
    "A header, the empty line, and nothing after it.",
    crlf(
        "From: nobody@void.test\n"
        "To: somebody@example.com\n"
        "Subject: (empty)\n"
        "Date: Tue, 29 Feb 2000 12:00:00 +0000\n"
        "Message-ID: <empty-body@void.test>\n"
        "\n"
    ).encode("ascii"),
    **{"from": "nobody@void.test"},
    to="somebody@example.com",
    date="2000-02-29T12:00:00Z",
    message_id="empty-body@void.test",
    subject="(empty)",
    body="",
    has_attach=False,
    **DEFAULTS,
)

write(
    "no_separator",
    "Header lines and then the end of the message, no empty line: the header\n"
    "is read, the body is empty.",
    crlf(
        "From: Header Only <HEADER@Only.Test>\n"
        "To: somebody@example.com\n"
        "Subject: no separator\n"
    ).encode("ascii"),
    **{"from": "header@only.test"},
    to="somebody@example.com",
    date="",
    message_id="",
    subject="no separator",
    body="",
    has_attach=False,
    **DEFAULTS,
)

write(
    "empty",
    "Zero bytes: every field empty or the default.",
    b"",
    **{"from": ""},
    to="",
    date="",
    message_id="",
    subject="",
    body="",
    has_attach=False,
    **DEFAULTS,
)

garbage_body = "\x01binary\x7f body follows é\r\n"
write(
    "garbage",
    "Lines that are not header fields, control bytes, bytes that are not\n"
    "UTF-8: no field is found, the body is what follows the first empty line\n"
    "(its non-UTF-8 bytes read as ISO-8859-1).",
    b"\x00\x01\x02 not a header\r\n\xff\xfe\xfd\r\n:::\r\n\r\n"
    + garbage_body.encode("latin-1"),
    **{"from": ""},
    to="",
    date="",
    message_id="",
    subject="",
    body=garbage_body,
    has_attach=False,
    **DEFAULTS,
)

# --- addresses, Date and Message-ID ------------------------------------------
write(
    "addresses",
    "From with a quoted display name and an upper-case address (lower-cased);\n"
    "To with three addresses, one folded onto the next line, one in mixed\n"
    "case (kept as written); Cc is not To; a negative-offset Date; a\n"
    "Message-ID in angle brackets.",
    crlf(
        "From: \"Carol Q. Sender\" <Carol.Sender@Mail.EXAMPLE.NET>\n"
        "To: Dave <dave@example.com>, Erin@Example.com,\n"
        "  \"Frank, Jr.\" <frank@example.org>\n"
        "Cc: not-to@example.com\n"
        "Subject: Three recipients\n"
        "Date: Sun, 31 Dec 2023 18:59:59 -0500\n"
        "Message-ID:\n"
        " <20231231235959.4242@mail.example.net>\n"
        "\n"
        "Happy new year.\n"
    ).encode("ascii"),
    **{"from": "carol.sender@mail.example.net"},
    to="dave@example.com, Erin@Example.com, frank@example.org",
    date="2023-12-31T18:59:59-05:00",
    message_id="20231231235959.4242@mail.example.net",
    subject="Three recipients",
    body="Happy new year.\r\n",
    has_attach=False,
    **DEFAULTS,
)

write(
    "unreadable_date",
    "A Date that is not a date and a Message-ID without brackets: the date is\n"
    "empty, the id is kept as written.",
    crlf(
        "From: sloppy@mailer.test\n"
        "To: you@example.com\n"
        "Subject: When?\n"
        "Date: sometime next week\n"
        "Message-ID: no-brackets-42@mailer.test\n"
        "\n"
        "Soon.\n"
    ).encode("ascii"),
    **{"from": "sloppy@mailer.test"},
    to="you@example.com",
    date="",
    message_id="no-brackets-42@mailer.test",
    subject="When?",
    body="Soon.\r\n",
    has_attach=False,
    **DEFAULTS,
)
