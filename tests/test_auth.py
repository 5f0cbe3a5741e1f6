"""Only valid tokens with SUPER_ADMIN get in; everything else is 401/403 and audited."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from backups.models import AuditEvent

pytestmark = pytest.mark.django_db
STATUS = "/api/backup/status"


def get(client, token: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
    return client.get(STATUS, **headers)


def test_no_token_is_401_with_bearer_challenge(anonymous, backup_root):
    response = anonymous.get(STATUS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert AuditEvent.objects.filter(action="auth.refused", outcome="refused").exists()


def test_super_admin_token_from_the_auth_service_is_accepted_without_a_user_row(
    anonymous, make_token, backup_root
):
    # The Auth Service puts the id in userId and no `sub`.
    token = make_token({"userId": "u-42", "role": "SUPER_ADMIN"})
    assert get(anonymous, token).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"id": 7, "role": ["STAFF", "SUPER_ADMIN"]},
        {"sub": "a", "role": ["SUPER_ADMIN"]},
    ],
)
def test_role_may_be_a_list_and_id_an_integer(anonymous, make_token, claims, backup_root):
    assert get(anonymous, make_token(claims)).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "a", "role": "ADMIN"},
        {"sub": "a", "role": ["ADMIN", "super_admin"]},
        {"sub": "a"},
    ],
)
def test_valid_token_without_super_admin_is_403(anonymous, make_token, claims, backup_root):
    response = get(anonymous, make_token(claims))
    assert response.status_code == 403
    assert AuditEvent.objects.filter(action="auth.forbidden", actor="a").exists()


def test_token_without_any_user_id_is_401(anonymous, make_token, backup_root):
    assert get(anonymous, make_token({"role": "SUPER_ADMIN"})).status_code == 401


def test_expired_token_is_401_but_leeway_forgives_a_few_seconds(anonymous, make_token, backup_root):
    assert get(anonymous, make_token(ttl=-120)).status_code == 401
    assert get(anonymous, make_token(ttl=-5)).status_code == 200


def test_not_yet_valid_token_is_401(anonymous, make_token, backup_root):
    token = make_token({"sub": "a", "role": "SUPER_ADMIN", "nbf": int(time.time()) + 3600})
    assert get(anonymous, token).status_code == 401


def test_token_without_exp_is_401(anonymous, settings, backup_root):
    token = jwt.encode({"sub": "a", "role": "SUPER_ADMIN"}, settings.JWT_SECRET, algorithm="HS256")
    assert get(anonymous, token).status_code == 401


def test_wrong_key_is_401(anonymous, make_token, backup_root):
    assert get(anonymous, make_token(key="another-secret-that-is-long-enough-1234")).status_code == 401


def test_alg_none_is_401(anonymous, backup_root):
    token = jwt.encode(
        {"sub": "a", "role": "SUPER_ADMIN", "exp": int(time.time()) + 60}, None, algorithm="none"
    )
    assert get(anonymous, token).status_code == 401


def test_other_hmac_algorithm_is_401(anonymous, make_token, backup_root):
    assert get(anonymous, make_token(algorithm="HS512")).status_code == 401


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer not.a.jwt", "Bearer " + "x" * 20000])
def test_garbage_authorization_is_401_not_500(anonymous, header, backup_root):
    assert anonymous.get(STATUS, HTTP_AUTHORIZATION=header).status_code == 401


def test_issuer_and_audience_are_checked_when_configured(anonymous, make_token, settings, backup_root):
    settings.SIMPLE_JWT = {**settings.SIMPLE_JWT, "ISSUER": "auth-service", "AUDIENCE": "backup"}
    good = make_token({"sub": "a", "role": "SUPER_ADMIN", "iss": "auth-service", "aud": "backup"})
    wrong_iss = make_token({"sub": "a", "role": "SUPER_ADMIN", "iss": "evil", "aud": "backup"})
    no_aud = make_token({"sub": "a", "role": "SUPER_ADMIN", "iss": "auth-service"})
    assert get(anonymous, good).status_code == 200
    assert get(anonymous, wrong_iss).status_code == 401
    assert get(anonymous, no_aud).status_code == 401


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_tokens_verify_with_the_public_key_and_refuse_hs_confusion(
    anonymous, settings, algorithm, backup_root
):
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings.SIMPLE_JWT = {
        **settings.SIMPLE_JWT,
        "ALGORITHM": algorithm,
        "SIGNING_KEY": "",
        "VERIFYING_KEY": public_pem,
    }
    claims = {"sub": "a", "role": "SUPER_ADMIN", "exp": int(time.time()) + 60}
    assert get(anonymous, jwt.encode(claims, private, algorithm=algorithm)).status_code == 200
    # The classic confusion attack: HS256 with the public key as the HMAC secret.
    forged = jwt.api_jws.PyJWS()
    forged._algorithms["HS256"].prepare_key = lambda key: key  # PyJWT refuses PEM keys for HMAC
    confused = forged.encode(json.dumps(claims).encode(), public_pem.encode(), algorithm="HS256")
    assert get(anonymous, confused).status_code == 401


def test_health_needs_no_token(anonymous, backup_root):
    response = anonymous.get("/health")
    assert response.status_code in (200, 503)
    body = response.json()
    assert set(body) >= {"status", "checks", "version", "uptime_seconds"}
    assert str(backup_root) not in response.content.decode()


def test_create_admin_token_prints_a_working_token(anonymous, backup_root):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_admin_token", "ops-1", "--ttl", "60", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert get(anonymous, token).status_code == 200
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "ops-1" and claims["exp"] - claims["iat"] == 60
