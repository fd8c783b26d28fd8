"""Hardened XML for SAML: bounded parsing without DTDs or entities, and XML Encryption key transport.

Everything an upstream sends goes through :func:`parse` first: a DOCTYPE is refused before and after
parsing (no entity expansion, no billion laughs, no external entities), the parser never touches the
network, and sizes are capped. :func:`decrypt_element` opens an ``EncryptedAssertion``/``EncryptedID``
(XML Encryption 1.1) with ``cryptography`` only, so idhub needs no ``xmlsec`` at run time.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from xml.sax.saxutils import quoteattr

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
XENC = "http://www.w3.org/2001/04/xmlenc#"
XENC11 = "http://www.w3.org/2009/xmlenc11#"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS = {"samlp": SAMLP, "saml": SAML, "md": MD, "ds": DS, "xenc": XENC, "xenc11": XENC11}

# Content encryption: AES only. 3DES-CBC (pysaml2's default) has a 64-bit block and is refused.
_AES_CBC = {f"{XENC}aes128-cbc": 16, f"{XENC}aes192-cbc": 24, f"{XENC}aes256-cbc": 32}
_AES_GCM = {f"{XENC11}aes128-gcm": 16, f"{XENC11}aes192-gcm": 24, f"{XENC11}aes256-gcm": 32}
# Key transport: RSA-OAEP only; RSAES-PKCS1-v1_5 (xmlenc#rsa-1_5) is open to Bleichenbacher's attack.
_RSA_OAEP_MGF1P = f"{XENC}rsa-oaep-mgf1p"
_RSA_OAEP = f"{XENC11}rsa-oaep"
_OAEP_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    f"{DS}sha1": hashes.SHA1,
    "http://www.w3.org/2001/04/xmlenc#sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512,
}
_MGF_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    f"{XENC11}mgf1sha1": hashes.SHA1,
    f"{XENC11}mgf1sha256": hashes.SHA256,
    f"{XENC11}mgf1sha384": hashes.SHA384,
    f"{XENC11}mgf1sha512": hashes.SHA512,
}
_ELEMENT_TYPE = f"{XENC}Element"
_XML_DECL = re.compile(rb"^\s*<\?xml[^>]*\?>")


class UnsafeXml(ValueError):
    """The XML is refused before anyone reads it; ``reason`` is a short code for the audit log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def parser() -> etree.XMLParser:
    """Return a new hardened parser (one per document: lxml parsers must not be shared between threads)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        dtd_validation=False,
        load_dtd=False,
        huge_tree=False,
        remove_comments=False,  # kept so that comment injection can be seen and refused
        remove_pis=False,
    )


def parse(data: bytes, *, max_bytes: int) -> etree._Element:
    """Parse one untrusted XML document; refuse DOCTYPEs, entities, non-UTF-8 input and anything over ``max_bytes``."""
    if len(data) > max_bytes:
        raise UnsafeXml("too_large", f"XML of {len(data)} bytes")
    try:
        text = data.decode("utf-8")  # the byte scan below must see what the parser sees (no UTF-16 disguise)
    except UnicodeDecodeError as exc:
        raise UnsafeXml("bad_encoding", "XML is not UTF-8") from exc
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise UnsafeXml("dtd_forbidden", "XML with a document type declaration")
    try:
        root = etree.fromstring(data, parser=parser())
    except etree.XMLSyntaxError as exc:
        raise UnsafeXml("malformed_xml", str(exc)[:200]) from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise UnsafeXml("dtd_forbidden", "XML with a document type declaration")
    for _ in root.iter(etree.Entity):
        raise UnsafeXml("dtd_forbidden", "XML with an entity reference")
    return root


def b64decode(value: str | None, *, what: str) -> bytes:
    """Decode base64 that may carry line breaks (xs:base64Binary); refuse anything else."""
    if value is None:
        raise UnsafeXml("malformed_xml", f"{what} without a value")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UnsafeXml("malformed_xml", f"{what} is not base64") from exc


def _single(parent: etree._Element, path: str, *, what: str) -> etree._Element:
    found = parent.findall(path, NS)
    if len(found) != 1:
        raise UnsafeXml("decrypt_failed", f"expected one {what}, found {len(found)}")
    return found[0]


def _unwrap_key(encrypted_key: etree._Element, private_key: rsa.RSAPrivateKey) -> bytes:
    """Decrypt one ``xenc:EncryptedKey`` with RSA-OAEP (XML Encryption 1.1 §5.5.2)."""
    method = _single(encrypted_key, "xenc:EncryptionMethod", what="EncryptionMethod")
    algorithm = method.get("Algorithm")
    if algorithm not in (_RSA_OAEP_MGF1P, _RSA_OAEP):
        raise UnsafeXml("weak_encryption", f"key transport {str(algorithm)[:80]!r} not allowed")
    digest_method = method.find("ds:DigestMethod", NS)
    digest_uri = digest_method.get("Algorithm") if digest_method is not None else f"{DS}sha1"
    mgf_method = method.find("xenc11:MGF", NS)
    mgf_uri = mgf_method.get("Algorithm") if mgf_method is not None else f"{XENC11}mgf1sha1"
    if algorithm == _RSA_OAEP_MGF1P:
        mgf_uri = f"{XENC11}mgf1sha1"  # rsa-oaep-mgf1p fixes MGF1 with SHA-1
    digest, mgf = _OAEP_DIGESTS.get(str(digest_uri)), _MGF_DIGESTS.get(str(mgf_uri))
    if digest is None or mgf is None:
        raise UnsafeXml("weak_encryption", "unsupported OAEP digest or mask generation function")
    params = method.find("xenc:OAEPparams", NS)
    label = b64decode(params.text, what="OAEPparams") if params is not None else None
    cipher_value = _single(encrypted_key, "xenc:CipherData/xenc:CipherValue", what="key CipherValue")
    wrapped = b64decode(cipher_value.text, what="key CipherValue")
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=mgf()), algorithm=digest(), label=label or None)
    try:
        return private_key.decrypt(wrapped, oaep)
    except ValueError as exc:
        raise UnsafeXml("decrypt_failed", "the content key does not open with this SP's key") from exc


def _decrypt_content(algorithm: str, key: bytes, blob: bytes) -> bytes:
    """Decrypt the CipherValue: AES-GCM (XML Encryption 1.1 §5.2.4) or AES-CBC (§5.2.2)."""
    if algorithm in _AES_GCM:
        if len(key) != _AES_GCM[algorithm] or len(blob) < 12 + 16:
            raise UnsafeXml("decrypt_failed", "AES-GCM key or ciphertext of the wrong size")
        try:
            return AESGCM(key).decrypt(blob[:12], blob[12:], None)  # IV || ciphertext || tag
        except InvalidTag as exc:
            raise UnsafeXml("decrypt_failed", "AES-GCM tag does not verify") from exc
    if algorithm in _AES_CBC:
        if len(key) != _AES_CBC[algorithm] or len(blob) < 32 or len(blob) % 16:
            raise UnsafeXml("decrypt_failed", "AES-CBC key or ciphertext of the wrong size")
        decryptor = Cipher(algorithms.AES(key), modes.CBC(blob[:16])).decryptor()
        padded = decryptor.update(blob[16:]) + decryptor.finalize()
        pad = padded[-1]
        # §5.2: only the last octet counts; the other padding octets are arbitrary (not PKCS#7-checked).
        if not 1 <= pad <= 16:
            raise UnsafeXml("decrypt_failed", "AES-CBC padding is invalid")
        return padded[:-pad]
    raise UnsafeXml("weak_encryption", f"content encryption {algorithm[:80]!r} not allowed")


def decrypt_element(container: etree._Element, private_key: rsa.RSAPrivateKey, *, max_bytes: int) -> etree._Element:
    """Return the element that ``container`` (an EncryptedAssertion or EncryptedID) holds encrypted.

    SAML Core §2.2.4/§2.3.4: the container holds one ``xenc:EncryptedData`` of Type Element, whose key is
    an ``xenc:EncryptedKey`` either inside its ``ds:KeyInfo`` or next to it in the container. Whoever has
    this SP's public key can encrypt, so what comes out proves nothing until a signature says so.
    """
    encrypted_data = _single(container, "xenc:EncryptedData", what="EncryptedData")
    if encrypted_data.get("Type") not in (None, _ELEMENT_TYPE):
        raise UnsafeXml("decrypt_failed", "EncryptedData is not of Type Element")
    method = _single(encrypted_data, "xenc:EncryptionMethod", what="EncryptionMethod")
    algorithm = str(method.get("Algorithm"))
    if algorithm not in _AES_CBC and algorithm not in _AES_GCM:
        raise UnsafeXml("weak_encryption", f"content encryption {algorithm[:80]!r} not allowed")
    candidates = encrypted_data.findall("ds:KeyInfo/xenc:EncryptedKey", NS) + container.findall("xenc:EncryptedKey", NS)
    if not candidates or len(candidates) > 8:
        raise UnsafeXml("decrypt_failed", "no usable EncryptedKey")
    key: bytes | None = None
    last: UnsafeXml | None = None
    for candidate in candidates:  # one EncryptedKey per recipient: ours is the one that opens
        try:
            key = _unwrap_key(candidate, private_key)
            break
        except UnsafeXml as exc:
            last = exc
    if key is None:
        raise last or UnsafeXml("decrypt_failed", "no EncryptedKey opens")
    cipher_value = _single(encrypted_data, "xenc:CipherData/xenc:CipherValue", what="CipherValue")
    plaintext = _decrypt_content(algorithm, key, b64decode(cipher_value.text, what="CipherValue"))
    return _parse_fragment(plaintext, encrypted_data, max_bytes=max_bytes)


def _parse_fragment(plaintext: bytes, context: etree._Element, *, max_bytes: int) -> etree._Element:
    """Parse decrypted element content in the namespace context it was encrypted in (XML Encryption §4.3)."""
    plaintext = _XML_DECL.sub(b"", plaintext, count=1)
    declarations = "".join(
        f" xmlns:{prefix}={quoteattr(uri)}" if prefix else f" xmlns={quoteattr(uri)}"
        for prefix, uri in context.nsmap.items()
    )
    wrapper = parse(f"<wrapper{declarations}>".encode() + plaintext + b"</wrapper>", max_bytes=max_bytes + 4096)
    elements = [child for child in wrapper if isinstance(child.tag, str)]
    stray_text = (wrapper.text or "").strip() or any((child.tail or "").strip() for child in wrapper)
    if len(elements) != 1 or len(wrapper) != 1 or stray_text:
        raise UnsafeXml("decrypt_failed", "decrypted content is not exactly one element")
    return elements[0]
