"""The SAML 2.0 connector: idhub as a Service Provider in the Web Browser SSO profile.

AuthnRequests go out on the HTTP-Redirect binding (Bindings §3.4), Responses come back on HTTP-POST
(Bindings §3.5). Every Response is parsed without DTDs or entities, its signature is verified with
``signxml`` against the IdP certificates the operator configured (never a certificate the message
carries), and afterwards only what the signature covers is read (XML signature wrapping). Each rule of
Core §2.5.1 and Profiles §4.1.4 is a small ``_check_*`` step that fails closed with
:class:`UpstreamRefused` and a reason code for the audit log.

The caller MUST record ``Identity.claims["assertion_id"]`` in its database replay cache until
``Identity.claims["not_on_or_after"]`` and refuse an assertion ID it has seen (Profiles §4.1.4.5): this
connector holds no state and cannot tell a replayed assertion from a fresh one.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hmac
import math
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from idhub.broker import saml_xml
from idhub.broker.connector import CallbackInput, Identity, LoginSecrets, LoginStart
from idhub.broker.errors import UpstreamConfigError, UpstreamRefused
from idhub.broker.saml_xml import DS, MD, NS, SAML, SAMLP, XSI, UnsafeXml

BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
PROTOCOL = "urn:oasis:names:tc:SAML:2.0:protocol"
STATUS_SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
CM_BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
NAMEID_ENTITY = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"

# Asymmetric signatures with SHA-2 only: SHA-1 is broken for signatures, and an HMAC "signature" proves
# nothing about the IdP (anyone who can read the metadata could key it). Digests likewise SHA-2 only.
ALLOWED_SIGNATURE_METHODS: frozenset[SignatureMethod] = frozenset(
    {
        SignatureMethod.RSA_SHA256,
        SignatureMethod.RSA_SHA384,
        SignatureMethod.RSA_SHA512,
        SignatureMethod.ECDSA_SHA256,
        SignatureMethod.ECDSA_SHA384,
        SignatureMethod.ECDSA_SHA512,
    }
)
ALLOWED_DIGESTS: frozenset[DigestAlgorithm] = frozenset(
    {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512}
)
# Core §5.4.4: enveloped-signature plus exclusive canonicalization; plain C14N is tolerated. No XPath,
# XSLT or base64 transforms: they let a signature cover something other than the element it names.
ALLOWED_TRANSFORMS: frozenset[str] = frozenset(
    {
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
        "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
        "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
        "http://www.w3.org/2006/12/xml-c14n11",
    }
)
_SIGN_ALG_RSA = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
_SIGN_ALG_EC = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"

_EMAIL = (
    "urn:oid:0.9.2342.19200300.100.1.3",
    "mail",
    "email",
    "emailAddress",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
)
_GIVEN_NAME = ("urn:oid:2.5.4.42", "givenName", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname")
_FAMILY_NAME = ("urn:oid:2.5.4.4", "sn", "surname", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname")
_DISPLAY_NAME = (
    "urn:oid:2.16.840.1.113730.3.1.241",
    "displayName",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
)
_USERNAME = ("urn:oid:0.9.2342.19200300.100.1.1", "uid", "urn:oid:1.3.6.1.4.1.5923.1.1.1.6", "eduPersonPrincipalName")
_GROUPS = (
    "groups",
    "memberOf",
    "isMemberOf",
    "urn:oid:1.3.6.1.4.1.5923.1.5.1.1",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
    "http://schemas.xmlsoap.org/claims/Group",
)
_MAX_ATTRIBUTES = 200
_MAX_VALUES = 500
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,255}$")
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,12})?(Z|[+-]\d{2}:\d{2})?$")


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


@dataclass(frozen=True, slots=True)
class SamlConfig:
    """One upstream SAML 2.0 identity provider and this SP's side of the trust (SAML Metadata §2.4)."""

    sp_entity_id: str  # {issuer}/broker/{alias}/saml/metadata
    acs_url: str  # {issuer}/broker/{alias}/saml/acs
    idp_entity_id: str
    idp_sso_url: str  # the IdP's HTTP-Redirect SingleSignOnService
    idp_certificates: tuple[str, ...]  # PEM, from the IdP metadata's signing KeyDescriptors
    sp_private_key_pem: str | None = None  # decrypts EncryptedAssertion/EncryptedID; signs AuthnRequests if asked
    sp_certificate_pem: str | None = None
    allow_idp_initiated: bool = False
    clock_skew: int = 120
    name_id_format: str = NAMEID_PERSISTENT
    max_response_bytes: int = 256_000
    sign_authn_requests: bool = False  # needs sp_private_key_pem and sp_certificate_pem


@dataclass(frozen=True, slots=True)
class _Verified:
    """A Response after signature verification: what may be read, and where comments must be looked for."""

    response: etree._Element  # the signed Response when it is signed, else the parsed one (unsigned fields)
    response_signed: bool
    assertion: etree._Element  # covered by a verified signature: the only source of identity data
    received_assertion: etree._Element  # as received (comments still in it), for the comment-injection check


@dataclass(frozen=True, slots=True)
class _Subject:
    name_id: str
    name_id_format: str
    not_on_or_after: float


class SamlConnector:
    """Sign people in at an upstream SAML 2.0 IdP (Web Browser SSO profile, SP-initiated by default)."""

    def __init__(self, config: SamlConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        if not config.idp_certificates:
            raise UpstreamConfigError("SAML upstream without a signing certificate")
        try:
            self._certificates = tuple(x509.load_pem_x509_certificate(pem.encode()) for pem in config.idp_certificates)
        except ValueError as exc:
            raise UpstreamConfigError("SAML upstream signing certificate is not a PEM certificate") from exc
        self._private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None
        if config.sp_private_key_pem is not None:
            try:
                key = serialization.load_pem_private_key(config.sp_private_key_pem.encode(), password=None)
            except (ValueError, TypeError) as exc:
                raise UpstreamConfigError("SAML SP private key is not an unencrypted PEM key") from exc
            if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                raise UpstreamConfigError("SAML SP private key must be RSA or EC")
            self._private_key = key
        if config.sign_authn_requests and (self._private_key is None or config.sp_certificate_pem is None):
            raise UpstreamConfigError("signing AuthnRequests needs the SP private key and certificate")

    # -- AuthnRequest -------------------------------------------------------------------------------

    async def login_url(self, *, state: str, callback_url: str, secrets: LoginSecrets) -> LoginStart:
        """Return the IdP's SSO URL with a deflated AuthnRequest and ``RelayState=state`` (Bindings §3.4.4).

        The AuthnRequest ID is ``secrets.request_id`` (sealed in ``state``), so the Response's
        ``InResponseTo`` can be matched on the way back (Profiles §4.1.4.1, §4.1.4.2).
        """
        self._check_callback_url(callback_url)
        request_id = secrets.request_id
        if not _NCNAME.match(request_id):  # Core §1.3.4: xs:ID, an NCName
            raise UpstreamConfigError("SAML request id is not an xs:ID")
        xml = self.authn_request(request_id)
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw DEFLATE, no zlib header (Bindings §3.4.4.1)
        encoded = base64.b64encode(deflater.compress(xml) + deflater.flush()).decode("ascii")
        params = {"SAMLRequest": encoded, "RelayState": state}
        if self.config.sign_authn_requests:
            params["SigAlg"] = (
                _SIGN_ALG_EC if isinstance(self._private_key, ec.EllipticCurvePrivateKey) else _SIGN_ALG_RSA
            )
            query = urlencode(params)
            params["Signature"] = base64.b64encode(self._sign_redirect(query.encode("ascii"))).decode("ascii")
        endpoint = self.config.idp_sso_url
        return LoginStart(url=f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}")

    def authn_request(self, request_id: str) -> bytes:
        """Return the AuthnRequest XML (Core §3.4.1) asking for a POSTed Response at the ACS URL."""
        config = self.config
        request = etree.Element(
            _q(SAMLP, "AuthnRequest"),
            nsmap={"samlp": SAMLP, "saml": SAML},
            ID=request_id,
            Version="2.0",
            IssueInstant=_instant(self.clock()),
            Destination=config.idp_sso_url,
            AssertionConsumerServiceURL=config.acs_url,
            ProtocolBinding=BINDING_POST,
        )
        etree.SubElement(request, _q(SAML, "Issuer")).text = config.sp_entity_id
        etree.SubElement(request, _q(SAMLP, "NameIDPolicy"), Format=config.name_id_format, AllowCreate="true")
        result: bytes = etree.tostring(request)
        return result

    def _sign_redirect(self, signed_part: bytes) -> bytes:
        """Sign ``SAMLRequest=..&RelayState=..&SigAlg=..`` as Bindings §3.4.4.1 says."""
        key = self._private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(signed_part, padding.PKCS1v15(), hashes.SHA256())
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(signed_part, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")  # XML DSig ECDSA: r || s

    def _check_callback_url(self, callback_url: str) -> None:
        if callback_url != self.config.acs_url:
            raise UpstreamConfigError("the ACS URL in use differs from the configured one")

    # -- Response ------------------------------------------------------------------------------------

    async def handle_callback(self, answer: CallbackInput, *, callback_url: str) -> Identity:
        """Validate a POSTed SAML Response (Profiles §4.1.4.3) and return who signed in.

        ``answer.request_id`` is the AuthnRequest ID this Response must answer; ``None`` means an
        IdP-initiated (unsolicited) Response, refused unless ``allow_idp_initiated``. The caller MUST
        keep ``claims["assertion_id"]`` in its replay cache until ``claims["not_on_or_after"]``.
        """
        self._check_callback_url(callback_url)
        request_id = answer.request_id
        if request_id is None and not self.config.allow_idp_initiated:
            raise UpstreamRefused("unsolicited", "IdP-initiated response while IdP-initiated sign-in is off")
        response = self._decode(answer.params)
        self._check_envelope(response)
        verified = self._verify(response)
        _check_no_comments(verified.received_assertion)
        self._check_response(verified, request_id=request_id)
        assertion = verified.assertion
        now = self.clock()
        self._check_assertion_header(assertion, now=now)
        conditions_end = self._check_conditions(assertion, now=now)
        subject = self._check_subject(assertion, request_id=request_id, now=now)
        authn = self._check_authn_statement(assertion, now=now)
        attributes = _attributes(assertion)
        expires = min(subject.not_on_or_after, conditions_end)
        return self.identity(
            subject=subject,
            attributes=attributes,
            assertion_id=str(assertion.get("ID")),
            # the instant after which this connector refuses the assertion anyway: keep the replay entry until then
            not_on_or_after=math.ceil(expires + self.config.clock_skew),
            authn=authn,
        )

    def _decode(self, params: Mapping[str, str]) -> etree._Element:
        """Bindings §3.5.4: base64 of the Response; cap both sizes before anything is parsed."""
        limit = self.config.max_response_bytes
        raw = params.get("SAMLResponse")
        if not raw:
            raise UpstreamRefused("no_response", "no SAMLResponse in the POST")
        if len(raw) > (limit * 4) // 3 + 1024:
            raise UpstreamRefused("too_large", f"SAMLResponse of {len(raw)} characters")
        try:
            data = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UpstreamRefused("bad_encoding", "SAMLResponse is not base64") from exc
        try:
            return saml_xml.parse(data, max_bytes=limit)
        except UnsafeXml as exc:
            raise UpstreamRefused(exc.reason, str(exc)) from exc

    def _check_envelope(self, response: etree._Element) -> None:
        """Core §3.2.2: a samlp:Response of version 2.0 whose Status is Success (§3.2.2.2)."""
        if response.tag != _q(SAMLP, "Response"):
            raise UpstreamRefused("not_a_response", f"root element {str(response.tag)[:100]!r}")
        if response.get("Version") != "2.0":
            raise UpstreamRefused("bad_version", "Response Version is not 2.0")
        code = response.find("samlp:Status/samlp:StatusCode", NS)
        if code is None:
            raise UpstreamRefused("malformed", "Response without a StatusCode")
        if code.get("Value") != STATUS_SUCCESS:
            second = code.find("samlp:StatusCode", NS)
            detail = f"{code.get('Value')} / {second.get('Value') if second is not None else '-'}"
            raise UpstreamRefused("status_not_success", f"IdP status {detail[:300]}")

    # -- signature -----------------------------------------------------------------------------------

    def _verify(self, response: etree._Element) -> _Verified:
        """Require a valid signature over the Response or its one Assertion (Profiles §4.1.4.3, §4.1.4.5).

        Only one Assertion (or EncryptedAssertion) may exist anywhere in the document, as a child of the
        Response: a second one, wrapped anywhere, is the shape of a signature-wrapping attack.
        """
        contained = _only_assertion(response)
        if response.find("ds:Signature", NS) is not None:
            signed = self._verify_signature(response, location="./", tag=_q(SAMLP, "Response"))
            held = _only_assertion(signed)
            if held.tag == _q(SAML, "EncryptedAssertion"):
                assertion = self._decrypt_assertion(held)
                return _Verified(signed, True, assertion, received_assertion=assertion)
            return _Verified(signed, True, held, received_assertion=contained)
        if contained.tag == _q(SAML, "EncryptedAssertion"):
            decrypted = self._decrypt_assertion(contained)
            if decrypted.find("ds:Signature", NS) is None:  # anyone can encrypt to us: a signature must vouch
                raise UpstreamRefused("unsigned", "encrypted assertion without a signature in an unsigned Response")
            assertion = self._verify_signature(decrypted, location="./", tag=_q(SAML, "Assertion"))
            return _Verified(response, False, assertion, received_assertion=decrypted)
        if contained.find("ds:Signature", NS) is None:
            raise UpstreamRefused("unsigned", "neither the Response nor the Assertion is signed")
        assertion = self._verify_signature(response, location=f"./{{{SAML}}}Assertion/", tag=_q(SAML, "Assertion"))
        return _Verified(response, False, assertion, received_assertion=contained)

    def _verify_signature(self, root: etree._Element, *, location: str, tag: str) -> etree._Element:
        """Verify the signature at ``location`` against the configured certificates; return what it signs.

        Core §5.4.2: one Reference, to the ID of the element that carries the signature. The element
        signxml hands back is checked to be that element, and is the only one read afterwards.
        """
        target = root if location == "./" else root.find(location.rstrip("/"))
        signatures = target.findall("ds:Signature", NS) if target is not None else []
        element_id = target.get("ID") if target is not None else None
        if not signatures or not element_id:
            raise UpstreamRefused("unsigned", "signature or ID missing")
        if len(signatures) > 1:
            raise UpstreamRefused("bad_signature", "more than one signature on one element")
        _check_signature_algorithms(signatures[0], element_id)
        when = datetime.fromtimestamp(self.clock(), UTC)
        expect = SignatureConfiguration(
            location=location,
            expect_references=1,
            signature_methods=ALLOWED_SIGNATURE_METHODS,
            digest_algorithms=ALLOWED_DIGESTS,
            verification_time=when,
        )
        failure = "no certificate"
        for certificate in self._certificates:  # KeyInfo is never trusted: only configured certificates
            try:
                result = XMLVerifier().verify(
                    root,
                    x509_cert=certificate,
                    expect_config=expect,
                    id_attribute="ID",
                    parser=saml_xml.parser(),
                )
            except (SignXMLException, etree.LxmlError, ValueError) as exc:
                failure = f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            signed = result.signed_xml if not isinstance(result, list) else None
            if signed is None or signed.tag != tag or signed.get("ID") != element_id:
                raise UpstreamRefused("wrong_reference", "the signature covers another element than it sits in")
            return signed
        raise UpstreamRefused("bad_signature", failure)

    def _decrypt_assertion(self, container: etree._Element) -> etree._Element:
        """SAML Core §2.3.4: decrypt an EncryptedAssertion with this SP's key (RSA-OAEP + AES)."""
        key = self._private_key
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UpstreamRefused("decrypt_failed", "encrypted assertion but no RSA SP key configured")
        try:
            element = saml_xml.decrypt_element(container, key, max_bytes=self.config.max_response_bytes)
        except UnsafeXml as exc:
            raise UpstreamRefused(exc.reason, str(exc)) from exc
        if element.tag != _q(SAML, "Assertion"):
            raise UpstreamRefused("decrypt_failed", "EncryptedAssertion does not hold an Assertion")
        _only_assertion(element, self_included=True)
        return element

    # -- Response and Assertion rules -----------------------------------------------------------------

    def _check_response(self, verified: _Verified, *, request_id: str | None) -> None:
        """Profiles §4.1.4.2 and §4.1.4.5: Destination, Issuer and InResponseTo of the Response."""
        response, config = verified.response, self.config
        destination = response.get("Destination")
        if destination is None and verified.response_signed:  # §4.1.4.5: required when the Response is signed
            raise UpstreamRefused("wrong_destination", "signed Response without Destination")
        if destination is not None and destination != config.acs_url:  # Bindings §3.5.5.2
            raise UpstreamRefused("wrong_destination", f"Response Destination {destination[:200]!r}")
        issuer = response.find("saml:Issuer", NS)
        if issuer is not None:
            self._check_issuer(issuer)
        _check_in_response_to(response.get("InResponseTo"), request_id, where="Response")

    def _check_issuer(self, issuer: etree._Element) -> None:
        """Profiles §4.1.4.2: the IdP's entity ID, Format omitted or ``entity``."""
        value = _value(issuer)
        if issuer.get("Format") not in (None, NAMEID_ENTITY) or not _same(value, self.config.idp_entity_id):
            raise UpstreamRefused("wrong_issuer", f"issuer {value[:200]!r}")

    def _check_assertion_header(self, assertion: etree._Element, *, now: float) -> None:
        """Core §2.3.3: Version 2.0, an ID, an IssueInstant not in the future, and the IdP as Issuer."""
        if assertion.get("Version") != "2.0" or not assertion.get("ID"):
            raise UpstreamRefused("malformed", "Assertion without Version 2.0 or ID")
        if _time(assertion.get("IssueInstant"), "IssueInstant") > now + self.config.clock_skew:
            raise UpstreamRefused("not_yet_valid", "Assertion issued in the future")
        issuer = assertion.find("saml:Issuer", NS)
        if issuer is None:
            raise UpstreamRefused("wrong_issuer", "Assertion without Issuer")
        self._check_issuer(issuer)

    def _check_conditions(self, assertion: etree._Element, *, now: float) -> float:
        """Core §2.5.1.2 time window, §2.5.1.4 audience; unknown conditions are Indeterminate: refuse.

        Returns the Conditions' NotOnOrAfter (infinity when absent).
        """
        skew, end = self.config.clock_skew, math.inf
        conditions = assertion.findall("saml:Conditions", NS)
        if len(conditions) != 1:  # Profiles §4.1.4.2 requires an AudienceRestriction, so Conditions too
            raise UpstreamRefused("wrong_audience", "Assertion without exactly one Conditions")
        element = conditions[0]
        not_before, not_on_or_after = element.get("NotBefore"), element.get("NotOnOrAfter")
        if not_before is not None and now + skew < _time(not_before, "NotBefore"):
            raise UpstreamRefused("not_yet_valid", "Conditions NotBefore is in the future")
        if not_on_or_after is not None:
            end = _time(not_on_or_after, "NotOnOrAfter")
            if now - skew >= end:
                raise UpstreamRefused("expired", "Conditions NotOnOrAfter has passed")
        restrictions = 0
        for condition in element:
            if condition.tag == _q(SAML, "AudienceRestriction"):
                restrictions += 1
                audiences = [_value(audience).strip() for audience in condition.findall("saml:Audience", NS)]
                if not any(_same(audience, self.config.sp_entity_id) for audience in audiences):
                    raise UpstreamRefused("wrong_audience", f"audiences {str(audiences)[:300]}")
            elif condition.tag in (_q(SAML, "OneTimeUse"), _q(SAML, "ProxyRestriction")):
                continue  # OneTimeUse: the broker's replay cache; proxying: we never re-issue the assertion
            else:
                raise UpstreamRefused("unknown_condition", f"condition {str(condition.tag)[:100]!r}")
        if restrictions == 0:  # Profiles §4.1.4.2
            raise UpstreamRefused("wrong_audience", "Assertion without AudienceRestriction")
        return end

    def _check_subject(self, assertion: etree._Element, *, request_id: str | None, now: float) -> _Subject:
        """Profiles §4.1.4.2: a NameID and a bearer SubjectConfirmation for this ACS and this request."""
        subject = assertion.find("saml:Subject", NS)
        if subject is None:
            raise UpstreamRefused("no_subject", "Assertion without Subject")
        name_id = subject.find("saml:NameID", NS)
        encrypted = subject.find("saml:EncryptedID", NS)
        if name_id is None and encrypted is not None:
            name_id = self._decrypt_name_id(encrypted)
        if name_id is None:
            raise UpstreamRefused("no_subject", "Subject without NameID")
        value = _value(name_id)
        if not value or len(value) > 1024:
            raise UpstreamRefused("no_subject", "empty or oversized NameID")
        name_format = name_id.get("Format") or "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
        if name_format == NAMEID_PERSISTENT:  # Core §8.3.7: the qualifiers, when present, name this IdP and SP
            qualifier, sp_qualifier = name_id.get("NameQualifier"), name_id.get("SPNameQualifier")
            if qualifier is not None and not _same(qualifier, self.config.idp_entity_id):
                raise UpstreamRefused("wrong_issuer", "persistent NameID qualified by another IdP")
            if sp_qualifier is not None and not _same(sp_qualifier, self.config.sp_entity_id):
                raise UpstreamRefused("wrong_audience", "persistent NameID qualified for another SP")
        failure: UpstreamRefused | None = None
        for confirmation in subject.findall("saml:SubjectConfirmation", NS):
            if confirmation.get("Method") != CM_BEARER:
                continue
            try:
                expires = self._check_bearer(confirmation, request_id=request_id, now=now)
            except UpstreamRefused as exc:
                failure = failure or exc
                continue
            return _Subject(value, name_format, expires)
        raise failure or UpstreamRefused("no_bearer_confirmation", "no bearer SubjectConfirmation")

    def _check_bearer(self, confirmation: etree._Element, *, request_id: str | None, now: float) -> float:
        """Profiles §4.1.4.2, §4.1.4.3: Recipient is the ACS, NotOnOrAfter ahead, no NotBefore, InResponseTo."""
        data = confirmation.find("saml:SubjectConfirmationData", NS)
        if data is None:
            raise UpstreamRefused("wrong_recipient", "bearer confirmation without SubjectConfirmationData")
        recipient = data.get("Recipient")
        if recipient is None or recipient != self.config.acs_url:
            raise UpstreamRefused("wrong_recipient", f"Recipient {str(recipient)[:200]!r}")
        if data.get("NotBefore") is not None:
            raise UpstreamRefused("malformed", "bearer SubjectConfirmationData with NotBefore")
        not_on_or_after = data.get("NotOnOrAfter")
        if not_on_or_after is None:
            raise UpstreamRefused("expired", "bearer SubjectConfirmationData without NotOnOrAfter")
        end = _time(not_on_or_after, "NotOnOrAfter")
        if now - self.config.clock_skew >= end:
            raise UpstreamRefused("expired", "SubjectConfirmationData NotOnOrAfter has passed")
        _check_in_response_to(data.get("InResponseTo"), request_id, where="SubjectConfirmationData")
        return end

    def _decrypt_name_id(self, encrypted: etree._Element) -> etree._Element:
        """Core §2.2.4: an EncryptedID inside the signed assertion decrypts to the NameID."""
        key = self._private_key
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UpstreamRefused("decrypt_failed", "EncryptedID but no RSA SP key configured")
        try:
            element = saml_xml.decrypt_element(encrypted, key, max_bytes=64_000)
        except UnsafeXml as exc:
            raise UpstreamRefused(exc.reason, str(exc)) from exc
        _check_no_comments(element)
        if element.tag != _q(SAML, "NameID"):
            raise UpstreamRefused("no_subject", "EncryptedID does not hold a NameID")
        return element

    def _check_authn_statement(self, assertion: etree._Element, *, now: float) -> dict[str, str | None]:
        """Profiles §4.1.4.2: an AuthnStatement; Core §2.7.2: SessionNotOnOrAfter not yet passed."""
        statement = assertion.find("saml:AuthnStatement", NS)
        if statement is None:
            raise UpstreamRefused("no_authn_statement", "Assertion without AuthnStatement")
        session_end = statement.get("SessionNotOnOrAfter")
        if session_end is not None and now - self.config.clock_skew >= _time(session_end, "SessionNotOnOrAfter"):
            raise UpstreamRefused("expired", "SessionNotOnOrAfter has passed")
        class_ref = statement.find("saml:AuthnContext/saml:AuthnContextClassRef", NS)
        return {
            "acr": (_value(class_ref).strip() or None) if class_ref is not None else None,
            "session_index": statement.get("SessionIndex"),
            "authn_instant": statement.get("AuthnInstant"),
        }

    def identity(
        self,
        *,
        subject: _Subject,
        attributes: Mapping[str, list[str]],
        assertion_id: str,
        not_on_or_after: int,
        authn: Mapping[str, str | None],
    ) -> Identity:
        """Normalise the assertion into an :class:`Identity`.

        A SAML ``mail`` attribute asserts an address, not that anyone verified it: ``email_verified`` is
        False and the broker decides by configuration whether to trust this IdP's addresses.
        """
        claims: dict[str, Any] = {
            "attributes": {name: list(values) for name, values in attributes.items()},
            "assertion_id": assertion_id,
            "not_on_or_after": not_on_or_after,
            "session_index": authn.get("session_index"),
            "authn_instant": authn.get("authn_instant"),
            "name_id_format": subject.name_id_format,
            # a transient NameID changes at every sign-in: linking by it makes a new account each time
            "transient_name_id": subject.name_id_format == NAMEID_TRANSIENT,
        }
        groups = tuple(dict.fromkeys(value for name in _GROUPS for value in attributes.get(name, ())))
        return Identity(
            issuer=self.config.idp_entity_id,
            subject=subject.name_id,
            email=_first(attributes, _EMAIL),
            email_verified=False,
            name=_first(attributes, _DISPLAY_NAME),
            given_name=_first(attributes, _GIVEN_NAME),
            family_name=_first(attributes, _FAMILY_NAME),
            username=_first(attributes, _USERNAME),
            groups=groups,
            amr=(),
            acr=authn.get("acr"),
            claims=claims,
        )


# -- helpers ---------------------------------------------------------------------------------------------


def _only_assertion(container: etree._Element, *, self_included: bool = False) -> etree._Element:
    """Return the one Assertion/EncryptedAssertion child; refuse any other anywhere below (XSW defence)."""
    kinds = (_q(SAML, "Assertion"), _q(SAML, "EncryptedAssertion"))
    everywhere = [element for element in container.iter(*kinds) if element is not container]
    if self_included:
        if everywhere:
            raise UpstreamRefused("assertion_count", "an assertion nested in the assertion")
        return container
    children = [child for child in container if child.tag in kinds]
    if not everywhere:
        raise UpstreamRefused("no_assertion", "Response without an assertion")
    if len(children) != 1 or len(everywhere) != 1:
        raise UpstreamRefused("assertion_count", f"{len(everywhere)} assertions, {len(children)} as children")
    return children[0]


def _check_signature_algorithms(signature: etree._Element, element_id: str) -> None:
    """Refuse SHA-1, HMAC and unusual transforms before verifying; one Reference to the signed element."""
    method = signature.find("ds:SignedInfo/ds:SignatureMethod", NS)
    algorithm = method.get("Algorithm") if method is not None else None
    if algorithm not in {m.value for m in ALLOWED_SIGNATURE_METHODS}:
        raise UpstreamRefused("weak_algorithm", f"signature method {str(algorithm)[:100]!r}")
    references = signature.findall("ds:SignedInfo/ds:Reference", NS)
    if len(references) != 1:
        raise UpstreamRefused("wrong_reference", f"{len(references)} references in one signature")
    reference = references[0]
    if reference.get("URI") != f"#{element_id}":  # Core §5.4.2
        raise UpstreamRefused("wrong_reference", "the Reference URI is not the signed element's ID")
    digest = reference.find("ds:DigestMethod", NS)
    if digest is None or digest.get("Algorithm") not in {d.value for d in ALLOWED_DIGESTS}:
        raise UpstreamRefused("weak_algorithm", "digest method not allowed")
    for transform in reference.findall("ds:Transforms/ds:Transform", NS):
        if transform.get("Algorithm") not in ALLOWED_TRANSFORMS:
            raise UpstreamRefused("weak_algorithm", f"transform {str(transform.get('Algorithm'))[:100]!r}")


def _check_no_comments(assertion: etree._Element) -> None:
    """Refuse comments and processing instructions inside the assertion as received.

    Canonicalization drops comments, so ``user@corp.example<!---->.evil.com`` keeps a valid signature
    while a naive reader of ``.text`` sees ``user@corp.example`` (CVE-2017-11427 and kin).
    """
    for node in assertion.iter(etree.Comment, etree.ProcessingInstruction):
        raise UpstreamRefused("comment_in_value", f"comment or PI inside {str(node.getparent().tag)[:100]!r}")


def _check_in_response_to(value: str | None, request_id: str | None, *, where: str) -> None:
    """Profiles §4.1.4.2: InResponseTo names our AuthnRequest; unsolicited Responses carry none (§4.1.5)."""
    if request_id is None:
        if value is not None:
            raise UpstreamRefused("wrong_in_response_to", f"{where} answers a request this sign-in did not make")
        return
    if value is None or not _same(value, request_id):
        raise UpstreamRefused("wrong_in_response_to", f"{where} InResponseTo does not name this AuthnRequest")


def _value(element: etree._Element) -> str:
    """Return the text of an element that must hold only text (no element, comment or PI inside)."""
    for child in element:
        if isinstance(child.tag, str):
            raise UpstreamRefused("element_in_value", f"element inside {str(element.tag)[:100]!r}")
        raise UpstreamRefused("comment_in_value", f"comment or PI inside {str(element.tag)[:100]!r}")
    return str(element.text or "")


def _attributes(assertion: etree._Element) -> dict[str, list[str]]:
    """Collect the AttributeStatements' string values by Name (Core §2.7.3); complex values are skipped."""
    found: dict[str, list[str]] = {}
    for attribute in assertion.iterfind("saml:AttributeStatement/saml:Attribute", NS):
        name = attribute.get("Name")
        if not name or (name not in found and len(found) >= _MAX_ATTRIBUTES):
            continue
        values = found.setdefault(name, [])
        for value in attribute.findall("saml:AttributeValue", NS):
            if value.get(_q(XSI, "nil")) in ("true", "1"):
                continue
            if any(isinstance(child.tag, str) for child in value):
                continue  # structured values (e.g. a NameID in eduPersonTargetedID) are not text
            if len(values) < _MAX_VALUES:
                values.append(_value(value))
    return found


def _first(attributes: Mapping[str, list[str]], names: tuple[str, ...]) -> str | None:
    for name in names:
        for value in attributes.get(name, ()):
            if value.strip():
                return value.strip()[:320]
    return None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _time(value: str | None, what: str) -> float:
    """Parse an xs:dateTime; SAML Core §1.3.3 says UTC, so offsets are honoured and a bare time is UTC."""
    match = _DATETIME.match(value or "")
    if match is None:
        raise UpstreamRefused("malformed", f"{what} is not an xs:dateTime")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    try:
        seconds = calendar.timegm(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timetuple())
    except ValueError as exc:
        raise UpstreamRefused("malformed", f"{what} is not a valid date") from exc
    fraction = float(match.group(7) or 0)
    offset = match.group(8)
    if offset and offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds + fraction


def _instant(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


# -- metadata --------------------------------------------------------------------------------------------


def parse_idp_metadata(xml: bytes) -> tuple[str, str, tuple[str, ...]]:
    """Read an IdP's metadata (SAML Metadata §2.4.3): entityID, HTTP-Redirect SSO URL, signing certificates.

    The document goes through the same hardened parser as Responses. An ``EntitiesDescriptor`` is
    accepted when exactly one of its entities is a SAML 2.0 IdP. Raises :class:`UpstreamConfigError`.
    """
    try:
        root = saml_xml.parse(xml, max_bytes=2_000_000)
    except UnsafeXml as exc:
        raise UpstreamConfigError("IdP metadata is not acceptable XML", internal=f"{exc.reason}: {exc}") from exc
    if root.tag == _q(MD, "EntitiesDescriptor"):
        entities = [entity for entity in root.iter(_q(MD, "EntityDescriptor")) if _idp_descriptor(entity) is not None]
        if len(entities) != 1:
            raise UpstreamConfigError(f"metadata holds {len(entities)} SAML 2.0 IdPs; give the one to use")
        root = entities[0]
    if root.tag != _q(MD, "EntityDescriptor"):
        raise UpstreamConfigError("metadata without an EntityDescriptor")
    entity_id = root.get("entityID")
    descriptor = _idp_descriptor(root)
    if not entity_id or descriptor is None:
        raise UpstreamConfigError("metadata without an entityID and a SAML 2.0 IDPSSODescriptor")
    sso_url = next(
        (
            service.get("Location")
            for service in descriptor.findall("md:SingleSignOnService", NS)
            if service.get("Binding") == BINDING_REDIRECT and service.get("Location")
        ),
        None,
    )
    if sso_url is None or not sso_url.startswith(("https://", "http://")):
        raise UpstreamConfigError("metadata without an HTTP-Redirect SingleSignOnService")
    certificates: list[str] = []
    for descriptor_key in descriptor.findall("md:KeyDescriptor", NS):
        if descriptor_key.get("use") not in (None, "signing"):  # no use attribute: both (Metadata §2.4.1.1)
            continue
        for element in descriptor_key.findall("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS):
            try:
                der = saml_xml.b64decode(element.text, what="X509Certificate")
                pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode("ascii")
            except (UnsafeXml, ValueError) as exc:
                raise UpstreamConfigError("metadata holds an unreadable signing certificate") from exc
            if pem not in certificates:
                certificates.append(pem)
    if not certificates:
        raise UpstreamConfigError("metadata without a signing certificate")
    return entity_id, sso_url, tuple(certificates)


def _idp_descriptor(entity: etree._Element) -> etree._Element | None:
    for descriptor in entity.findall("md:IDPSSODescriptor", NS):
        if PROTOCOL in (descriptor.get("protocolSupportEnumeration") or "").split():
            return descriptor
    return None


def new_sp_key(entity_id: str, *, now: float | None = None) -> tuple[str, str]:
    """Return a fresh RSA-3072 private key and a self-signed certificate for this SP (PEM, PEM).

    The certificate only carries the public key in metadata (SAML Metadata §2.4.1.1): IdPs encrypt
    assertions to it, and trust in it comes from the metadata exchange, not from a CA. The key never
    leaves idhub unsealed.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    start = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, urlsplit(entity_id).hostname or "idhub")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(start + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def sp_metadata(config: SamlConfig) -> bytes:
    """Return this SP's metadata (SAML Metadata §2.4.4): POST ACS, signed assertions wanted, keys if any."""
    root = etree.Element(_q(MD, "EntityDescriptor"), nsmap={"md": MD, "ds": DS}, entityID=config.sp_entity_id)
    descriptor = etree.SubElement(
        root,
        _q(MD, "SPSSODescriptor"),
        protocolSupportEnumeration=PROTOCOL,
        AuthnRequestsSigned="true" if config.sign_authn_requests else "false",
        WantAssertionsSigned="true",
    )
    if config.sp_certificate_pem is not None:
        uses = ("signing", "encryption") if config.sign_authn_requests else ("encryption",)
        try:
            certificate = x509.load_pem_x509_certificate(config.sp_certificate_pem.encode())
        except ValueError as exc:
            raise UpstreamConfigError("SAML SP certificate is not a PEM certificate") from exc
        der = certificate.public_bytes(serialization.Encoding.DER)
        for use in uses:
            key = etree.SubElement(descriptor, _q(MD, "KeyDescriptor"), use=use)
            data = etree.SubElement(etree.SubElement(key, _q(DS, "KeyInfo")), _q(DS, "X509Data"))
            etree.SubElement(data, _q(DS, "X509Certificate")).text = base64.b64encode(der).decode("ascii")
            if use == "encryption":
                for algorithm in (
                    "http://www.w3.org/2009/xmlenc11#aes256-gcm",
                    "http://www.w3.org/2009/xmlenc11#aes128-gcm",
                    "http://www.w3.org/2001/04/xmlenc#aes256-cbc",
                    "http://www.w3.org/2001/04/xmlenc#aes128-cbc",
                    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
                ):
                    etree.SubElement(key, _q(MD, "EncryptionMethod"), Algorithm=algorithm)
    etree.SubElement(descriptor, _q(MD, "NameIDFormat")).text = config.name_id_format
    etree.SubElement(
        descriptor,
        _q(MD, "AssertionConsumerService"),
        Binding=BINDING_POST,
        Location=config.acs_url,
        index="0",
        isDefault="true",
    )
    result: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return result
