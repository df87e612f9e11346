"""Fingerprints of OpenPGP public keys, standard library only (no gpg, no Ansible).

Used to pin a package repository's signing key before a host trusts it: the key block is
read, never imported, and the fingerprint of each version 4 key in it is computed as
RFC 4880 section 12.2 (RFC 9580 section 5.5.4.2) defines it:

    SHA-1( 0x99 || two-octet big-endian body length || public key packet body )

Input is an ASCII-armored block ("-----BEGIN PGP PUBLIC KEY BLOCK-----", as apt's
Signed-By .asc files hold it) or the same packets in binary (gpg --export, a .gpg keyring).
Anything else raises ValueError saying what was found instead. Version 3 keys (obsolete,
MD5 fingerprints) and version 5/6 keys (SHA-256 fingerprints, LibrePGP / RFC 9580) are
reported as unsupported rather than guessed at.
"""
import base64
import binascii
import hashlib
import re

PUBLIC_KEY = 6
PUBLIC_SUBKEY = 14

# Packets that may follow a public key in a transferable public key (RFC 9580 section 10.1),
# besides the keys themselves: signature, trust, user ID, user attribute, marker, padding.
_ALLOWED_IN_KEY = {2, 10, 12, 13, 17, 21}
_TAG_NAMES = {
    1: "public-key encrypted session key", 2: "signature", 3: "symmetric-key encrypted session key",
    4: "one-pass signature", 5: "secret key", 6: "public key", 7: "secret subkey", 8: "compressed data",
    9: "symmetrically encrypted data", 10: "marker", 11: "literal data", 12: "trust", 13: "user ID",
    14: "public subkey", 17: "user attribute", 18: "encrypted and integrity protected data",
    19: "modification detection code", 20: "AEAD encrypted data", 21: "padding",
}

_ARMOR_LINE = re.compile(r"^-----(BEGIN|END) PGP ([A-Z0-9 ,/]+)-----\s*$")
_HEADER_LINE = re.compile(r"^[\x21-\x39\x3b-\x7e]+: ")
_CRC_LINE = re.compile(r"^=[A-Za-z0-9+/]{4}$")


def _tag_name(tag):
    return "%d (%s)" % (tag, _TAG_NAMES.get(tag, "unknown"))


def dearmor(text):
    """The binary packets of every PUBLIC KEY BLOCK in an ASCII-armored text, concatenated.

    Armor headers (Version:, Comment:, ...) and the =XXXX checksum line are skipped; the
    checksum is not verified (RFC 9580 section 6.1: receivers must not reject on it), the
    packets themselves are checked by the parser.
    """
    blocks = []
    kind = None
    body = []
    in_headers = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        match = _ARMOR_LINE.match(line)
        if match:
            edge, label = match.groups()
            if edge == "BEGIN":
                if kind is not None:
                    raise ValueError("armor line %d: BEGIN PGP %s inside an unfinished BEGIN PGP %s block"
                                     % (number, label, kind))
                if label != "PUBLIC KEY BLOCK":
                    raise ValueError("armor line %d: this is a PGP %s, not a PGP PUBLIC KEY BLOCK" % (number, label))
                kind, body, in_headers = label, [], True
            else:
                if kind is None or label != kind:
                    raise ValueError("armor line %d: END PGP %s without its BEGIN line" % (number, label))
                blocks.append(_decode_base64("".join(body), number))
                kind = None
            continue
        if kind is None:
            continue  # text around the block (a mail, a web page's prose) is not ours to judge
        if in_headers:
            if _HEADER_LINE.match(line):
                continue
            in_headers = False
            if not line:
                continue  # the blank line that ends the headers
        if not line or _CRC_LINE.match(line):
            continue
        body.append(line)
    if kind is not None:
        raise ValueError("the armored PGP %s has no END line: the text is truncated" % kind)
    if not blocks:
        raise ValueError("no '-----BEGIN PGP PUBLIC KEY BLOCK-----' line: "
                         "this is not an ASCII-armored OpenPGP public key")
    return b"".join(blocks)


def _decode_base64(data, end_line):
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the armored block ending on line %d is not valid base64 (%s)" % (end_line, exc)) from None


def _body_length(data, pos, first, where):
    """(length, header octets used, partial?) of a new-format length starting at data[pos]."""
    if first < 192:
        return first, 1, False
    if first < 224:
        if pos + 2 > len(data):
            raise ValueError("%s: the two-octet length is cut off: the data is truncated" % where)
        return ((first - 192) << 8) + data[pos + 1] + 192, 2, False
    if first == 255:
        if pos + 5 > len(data):
            raise ValueError("%s: the five-octet length is cut off: the data is truncated" % where)
        return int.from_bytes(data[pos + 1:pos + 5], "big"), 5, False
    return 1 << (first & 0x1F), 1, True


def packets(data):
    """Yield (offset, tag, body) for each OpenPGP packet in data (bytes), old or new format."""
    pos = 0
    while pos < len(data):
        offset = pos
        header = data[pos]
        where = "packet at offset %d" % offset
        if not header & 0x80:
            raise ValueError("%s: octet 0x%02x is not an OpenPGP packet header (bit 7 clear): "
                             "this is not OpenPGP data" % (where, header))
        pos += 1
        if header & 0x40:  # new format: tag in bits 5-0, then one or more length fields
            tag = header & 0x3F
            chunks = []
            while True:
                if pos >= len(data):
                    raise ValueError("%s (tag %s): the length is missing: the data is truncated"
                                     % (where, _tag_name(tag)))
                length, used, partial = _body_length(data, pos, data[pos], where)
                pos += used
                if pos + length > len(data):
                    raise ValueError("%s (tag %s) needs %d octets but only %d remain: the data is truncated"
                                     % (where, _tag_name(tag), length, len(data) - pos))
                chunks.append(data[pos:pos + length])
                pos += length
                if not partial:
                    break
            body = b"".join(chunks)
        else:  # old format: tag in bits 5-2, length type in bits 1-0
            tag = (header >> 2) & 0x0F
            length_type = header & 0x03
            if length_type == 3:  # indeterminate: the packet runs to the end of the data
                length = len(data) - pos
            else:
                size = 1 << length_type  # 1, 2 or 4 octets
                if pos + size > len(data):
                    raise ValueError("%s (tag %s): the %d-octet length is cut off: the data is truncated"
                                     % (where, _tag_name(tag), size))
                length = int.from_bytes(data[pos:pos + size], "big")
                pos += size
            if pos + length > len(data):
                raise ValueError("%s (tag %s) needs %d octets but only %d remain: the data is truncated"
                                 % (where, _tag_name(tag), length, len(data) - pos))
            body = data[pos:pos + length]
            pos += length
        if tag == 0:
            raise ValueError("%s has the reserved tag 0: this is not OpenPGP data" % where)
        yield offset, tag, body


def v4_fingerprint(body, where="public key packet"):
    """Upper-case hex fingerprint of a public key or subkey packet body; version 4 only."""
    if not body:
        raise ValueError("%s is empty" % where)
    version = body[0]
    if version in (5, 6):
        raise ValueError("%s is a version %d key (%s): its fingerprint is SHA-256 based and not supported here; "
                         "only version 4 keys are" % (where, version, "RFC 9580" if version == 6 else "LibrePGP"))
    if version in (2, 3):
        raise ValueError("%s is an obsolete version %d key (MD5 fingerprint): not supported; only version 4 keys are"
                         % (where, version))
    if version != 4:
        raise ValueError("%s has unknown key version %d; only version 4 keys are supported" % (where, version))
    if len(body) < 6:
        raise ValueError("%s is %d octets, too short for a version 4 key" % (where, len(body)))
    if len(body) > 0xFFFF:
        raise ValueError("%s is %d octets, too long for a version 4 key" % (where, len(body)))
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest().upper()


def key_fingerprints(data):
    """{"primary": [...], "subkeys": [...]} for an OpenPGP public key block (str or bytes).

    A str must be ASCII-armored; bytes may be armored or binary. The fingerprints are 40
    upper-case hex digits, in the order the keys appear. Raises ValueError for anything that
    is not a public key (a secret key, a signature, a message, garbage, truncated data) and
    for key versions other than 4.
    """
    if isinstance(data, (str, bytes, bytearray)) and not data.strip():
        raise ValueError("empty input: no OpenPGP public key")
    if isinstance(data, str):
        binary = dearmor(data)
    elif isinstance(data, (bytes, bytearray)):
        data = bytes(data)
        if data and data[0] & 0x80:  # a packet header: binary packets
            binary = data
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError("the data is neither OpenPGP packets (first octet 0x%02x has bit 7 clear) "
                                 "nor ASCII-armored text" % data[0]) from None
            binary = dearmor(text)
    else:
        raise ValueError("expected the key as text or bytes, got %s" % type(data).__name__)
    if not binary:
        raise ValueError("the armored block is empty: no OpenPGP public key")

    primary, subkeys = [], []
    for offset, tag, body in packets(binary):
        where = "%s packet at offset %d" % ("subkey" if tag == PUBLIC_SUBKEY else "public key", offset)
        if tag == PUBLIC_KEY:
            primary.append(v4_fingerprint(body, where))
        elif tag == PUBLIC_SUBKEY:
            if not primary:
                raise ValueError("%s comes before any primary public key" % where)
            subkeys.append(v4_fingerprint(body, where))
        elif tag in (5, 7):
            raise ValueError("packet at offset %d is a %s: this is secret key material, not a public key"
                             % (offset, _TAG_NAMES[tag]))
        elif tag not in _ALLOWED_IN_KEY:
            raise ValueError("packet at offset %d has tag %s, which does not belong in a public key"
                             % (offset, _tag_name(tag)))
        elif not primary and tag not in (10, 21):
            raise ValueError("packet at offset %d (tag %s) comes before any public key packet: "
                             "this is not an OpenPGP public key" % (offset, _tag_name(tag)))
    if not primary:
        raise ValueError("no public key packet (tag 6) found: this is not an OpenPGP public key")
    return {"primary": primary, "subkeys": subkeys}
