//! Unit tests of the security-critical pure functions: access tokens (what `verify_access`
//! refuses), password policy and hashing, opaque token hashes, TOTP and emails.

use super::*;

#[test]
fn rfc6238_vector() {
    // RFC 6238 appendix B, SHA1, secret "12345678901234567890", 8 digits 94287082 at t=59.
    let secret = base32_encode(b"12345678901234567890");
    assert_eq!(totp_code(&secret, 59).unwrap(), "287082");
    assert_eq!(base32_decode(&secret).unwrap(), b"12345678901234567890");
}

#[test]
fn password_policy() {
    assert!(check_password_policy("Short1!", 12).is_err());
    assert!(check_password_policy("NoDigitsHere!!", 12).is_err());
    assert!(check_password_policy("nouppercase1!", 12).is_err());
    assert!(check_password_policy("NoSpecial1234", 12).is_err());
    assert!(check_password_policy("Good-Passw0rd!", 12).is_ok());
}

#[test]
fn roles() {
    assert_eq!(role_permissions("viewer").unwrap(), vec!["agent:read", "task:read"]);
    assert!(role_permissions("admin").unwrap().contains(&"task:read:all".to_string()));
    assert!(role_permissions("root").is_none());
}
const SECRET: &str = "unit-test-secret-of-at-least-32-bytes!!";

/// Auth settings for unit tests (also `sealed`'s).
pub(super) fn settings() -> AuthSettings {
    AuthSettings {
        access_token_ttl_secs: 900,
        refresh_token_ttl_secs: 604_800,
        session_idle_secs: 1800,
        max_sessions: 5,
        leeway_secs: 30,
        password_min_length: 12,
        password_history: 5,
        password_max_age_days: 90,
        // Small, so the test is quick; the parameters travel in the hash.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        argon2_parallelism: 1,
        totp_issuer: "DevCycle".into(),
        deny_list_check_secs: 5,
        data_key: crate::settings::Secret::new(crate::settings::DEV_DATA_KEY),
        data_key_previous: crate::settings::Secret::new(""),
    }
}

/// Signs arbitrary claims with `alg` and `secret`, as an attacker or a buggy client could.
fn sign(alg: Algorithm, secret: &str, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn claims_at(iat: i64, exp: i64) -> serde_json::Value {
    serde_json::json!({"sub": "u1", "email": "a@b.c", "role": "viewer", "permissions": ["task:read"],
                       "iat": iat, "exp": exp, "jti": "j1"})
}

#[test]
fn an_issued_access_token_verifies_with_the_spec_claims() {
    let (token, claims) = issue_access(SECRET, &settings(), "u1", "a@b.c", "developer");
    let got = verify_access(SECRET, 30, &token).unwrap();
    assert_eq!((got.sub.as_str(), got.email.as_str(), got.role.as_str()), ("u1", "a@b.c", "developer"));
    assert_eq!(got.exp - got.iat, 900, "the spec's 15-minute access token");
    assert_eq!(got.jti, claims.jti);
    assert_eq!(got.permissions, role_permissions("developer").unwrap());
}

#[test]
fn access_tokens_that_must_be_refused_are() {
    let now = chrono::Utc::now().timestamp();
    let (good, _) = issue_access(SECRET, &settings(), "u1", "a@b.c", "viewer");
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let parts: Vec<&str> = good.split('.').collect();
    let admin = claims_at(now, now + 900).as_object().cloned().map(|mut m| {
        m.insert("role".into(), "admin".into());
        serde_json::Value::Object(m)
    });
    let refused = [
        ("another secret", sign(Algorithm::HS256, "some-other-secret-of-32-bytes-or-more", &claims_at(now, now + 900))),
        ("HS512 with the right secret", sign(Algorithm::HS512, SECRET, &claims_at(now, now + 900))),
        ("alg none", format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "JWT"})), parts[1])),
        ("payload swapped", format!("{}.{}.{}", parts[0], b64(&admin.unwrap()), parts[2])),
        ("signature cut", format!("{}.{}.", parts[0], parts[1])),
        ("expired beyond leeway", sign(Algorithm::HS256, SECRET, &claims_at(now - 1000, now - 31))),
        ("no jti", {
            let mut c = claims_at(now, now + 900);
            c.as_object_mut().unwrap().remove("jti");
            sign(Algorithm::HS256, SECRET, &c)
        }),
        ("no exp", {
            let mut c = claims_at(now, now + 900);
            c.as_object_mut().unwrap().remove("exp");
            sign(Algorithm::HS256, SECRET, &c)
        }),
        ("not a JWT", "not.a.jwt".to_string()),
        ("empty", String::new()),
    ];
    for (why, token) in refused {
        assert!(matches!(verify_access(SECRET, 30, &token), Err(TokenError::Invalid(_))), "accepted: {why}");
    }
    let future = sign(Algorithm::HS256, SECRET, &claims_at(now + 300, now + 1200));
    assert!(matches!(verify_access(SECRET, 30, &future), Err(TokenError::NotYetValid)), "issued in the future");
    // Within the leeway either way: accepted.
    let skewed = sign(Algorithm::HS256, SECRET, &claims_at(now + 20, now - 20 + 900));
    assert!(verify_access(SECRET, 30, &skewed).is_ok());
    let just_expired = sign(Algorithm::HS256, SECRET, &claims_at(now - 900, now - 10));
    assert!(verify_access(SECRET, 30, &just_expired).is_ok());
    assert!(verify_access(SECRET, 0, &just_expired).is_err());
}

#[test]
fn passwords_hash_with_argon2id_and_a_fresh_salt() {
    let s = settings();
    let a = hash_password(&s, "Good-Passw0rd!").unwrap();
    let b = hash_password(&s, "Good-Passw0rd!").unwrap();
    assert!(a.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{a}");
    assert_ne!(a, b, "a salt per hash");
    assert!(verify_password(&a, "Good-Passw0rd!"));
    assert!(!verify_password(&a, "good-Passw0rd!"));
    assert!(!verify_password("not a PHC string", "Good-Passw0rd!"));
    let bad = AuthSettings { argon2_memory_kib: 1, ..s };
    assert!(hash_password(&bad, "Good-Passw0rd!").is_err(), "parameters argon2 refuses are an error");
}

#[test]
fn the_password_policy_counts_characters_and_caps_the_length() {
    assert!(check_password_policy("Ünïcödé-Pass1", 12).is_ok(), "13 characters, more bytes");
    assert!(check_password_policy("Ab1!Ab1!Ab1", 12).is_err(), "11 characters");
    let long = format!("Aa1!{}", "x".repeat(253));
    assert_eq!(check_password_policy(&long, 12).unwrap_err(), "must be at most 256 characters");
}

#[test]
fn opaque_tokens_are_random_and_stored_as_their_sha256() {
    let (a, b) = (random_token("dcs_"), random_token("dcs_"));
    assert!(a.starts_with("dcs_") && a.len() == 4 + 43, "{a}");
    assert_ne!(a, b);
    // SHA-256("abc"), FIPS 180-2.
    assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn totp_accepts_one_step_of_skew_and_nothing_else() {
    let secret = new_totp_secret();
    let now = chrono::Utc::now().timestamp();
    let current = totp_code(&secret, now).unwrap();
    assert!(totp_verify(&secret, &current));
    assert!(totp_verify(&secret, &format!(" {current} ")), "surrounding spaces are ignored");
    let far = totp_code(&secret, now - 120).unwrap();
    if ![-30, 0, 30].iter().any(|d| totp_code(&secret, now + d).unwrap() == far) {
        assert!(!totp_verify(&secret, &far), "a code from four steps ago");
    }
    assert!(!totp_verify(&secret, "12345"), "too short");
    assert!(!totp_verify("not base32!", "123456"));
    assert!(base32_decode("0189").is_none(), "0, 1, 8 and 9 are not base32");
    let url = otpauth_url("Dev Cycle", "a+b@c.d", &secret);
    assert_eq!(url, format!("otpauth://totp/Dev%20Cycle:a%2Bb%40c.d?secret={secret}&issuer=Dev%20Cycle&algorithm=SHA1&digits=6&period=30"));
}

#[test]
fn emails_need_a_local_part_a_domain_and_no_spaces() {
    for ok in ["a@b", "first.last+tag@example.test"] {
        assert!(validate_email(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a", "@b", "a@", "a b@c.d", "a@b\n", &format!("{}@b.c", "x".repeat(251))] {
        assert!(validate_email(bad).is_err(), "{bad:?}");
    }
}

/// During a key rotation a token of the previous key verifies, with every other check intact;
/// outside one (or with a third key) it does not.
#[test]
fn a_rotation_accepts_the_previous_key_only_while_it_is_configured() {
    const OLD: &str = "the-previous-secret-of-32-bytes!!!!";
    let (old_token, _) = issue_access(OLD, &settings(), "u1", "a@b.c", "developer");
    let (new_token, _) = issue_access(SECRET, &settings(), "u1", "a@b.c", "developer");
    assert!(verify_access_rotating(SECRET, OLD, 30, &old_token).is_ok());
    assert!(verify_access_rotating(SECRET, OLD, 30, &new_token).is_ok());
    assert!(matches!(verify_access_rotating(SECRET, "", 30, &old_token), Err(TokenError::Invalid(_))));
    let (third, _) = issue_access("a-third-secret-nobody-configured!!", &settings(), "u1", "a@b.c", "developer");
    assert!(matches!(verify_access_rotating(SECRET, OLD, 30, &third), Err(TokenError::Invalid(_))));
    let now = chrono::Utc::now().timestamp();
    let expired = sign(Algorithm::HS256, OLD, &claims_at(now - 1000, now - 100));
    assert!(matches!(verify_access_rotating(SECRET, OLD, 30, &expired), Err(TokenError::Invalid(_))));
    let future = sign(Algorithm::HS256, OLD, &claims_at(now + 600, now + 1500));
    assert!(matches!(verify_access_rotating(SECRET, OLD, 30, &future), Err(TokenError::NotYetValid)));
    let hs512 = sign(Algorithm::HS512, OLD, &claims_at(now, now + 900));
    assert!(matches!(verify_access_rotating(SECRET, OLD, 30, &hs512), Err(TokenError::Invalid(_))));
}
