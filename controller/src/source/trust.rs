//! Trust in what the remote says: SSH host keys against `known_hosts`, and commit
//! signatures against an OpenSSH allowed-signers file (validity windows included).

use super::*;
/// Whether `known_hosts` lists `key` (raw SSH wire bytes) for `host` on `port`: a
/// plain `host` entry means port 22, `[host]:port` that port. A `@revoked` line with the
/// key refuses it whatever else the file says; `@cert-authority` lines are not used.
pub(super) fn known_host(known_hosts: &str, host: &str, port: u16, key: &[u8]) -> bool {
    use base64::Engine as _;
    let mut trusted = false;
    for line in known_hosts.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace().peekable();
        let marker = parts.next_if(|p| p.starts_with('@'));
        let (Some(hosts), Some(_kind), Some(blob)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !base64::engine::general_purpose::STANDARD
            .decode(blob)
            .is_ok_and(|b| b == key)
        {
            continue;
        }
        match marker {
            Some("@revoked") => return false,
            Some(_) => continue,
            None => {}
        }
        trusted |= hosts.split(',').any(|h| {
            if let Some(rest) = h.strip_prefix('[') {
                rest.split_once("]:")
                    .is_some_and(|(n, p)| n == host && p.parse() == Ok(port))
            } else {
                h == host && port == 22
            }
        });
    }
    trusted
}

/// The SSH port of a remote URL (`ssh://host:2222/…`; 22 otherwise).
pub(super) fn ssh_port(url: &str) -> u16 {
    url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "ssh")
        .and_then(|u| u.port())
        .unwrap_or(22)
}

/// Verify an SSH signature (`-----BEGIN SSH SIGNATURE-----`, namespace `git`) over
/// `data` against an OpenSSH allowed-signers file; the key's principals must include the
/// committer's email (or `*`).
pub fn verify_ssh(
    signature: &str,
    data: &[u8],
    allowed_signers: &str,
    committer: &str,
    signed_at: i64,
) -> SignatureStatus {
    let untrusted = |reason: String| SignatureStatus::Untrusted { reason };
    if signature.contains("BEGIN PGP SIGNATURE") {
        return untrusted(
            "the commit has an OpenPGP signature; this controller verifies SSH signatures only"
                .into(),
        );
    }
    let sig = match ssh_key::SshSig::from_pem(signature) {
        Ok(s) => s,
        Err(e) => return untrusted(format!("not an SSH signature: {e}")),
    };
    let mut why = "the signing key is not in the allowed signers file".to_string();
    'lines: for line in allowed_signers.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((principals, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        // Options (namespaces="git", valid-after=…) may come before the key.
        let rest = rest.trim_start();
        let (options, key_text) = match rest.split_once(char::is_whitespace) {
            Some((first, tail))
                if !first.starts_with("ssh-")
                    && !first.starts_with("ecdsa-")
                    && !first.starts_with("sk-") =>
            {
                (first, tail.trim_start())
            }
            _ => ("", rest),
        };
        let Ok(key) = ssh_key::PublicKey::from_openssh(key_text) else {
            continue;
        };
        if key.key_data() != sig.public_key() {
            continue;
        }
        let namespaces = options
            .split(',')
            .find_map(|o| o.strip_prefix("namespaces="))
            .map(|v| v.trim_matches('"'));
        if namespaces.is_some_and(|ns| !ns.split(',').any(|n| n == "git")) {
            continue;
        }
        if options.split(',').any(|o| o == "cert-authority") {
            continue; // certificate authorities: not supported, never trusted
        }
        // valid-after / valid-before bound when the key may sign (checked against the
        // commit's time, as `git verify-commit` does); unreadable bounds fail closed.
        for (opt, after) in [("valid-after=", true), ("valid-before=", false)] {
            let Some(v) = options.split(',').find_map(|o| o.strip_prefix(opt)) else {
                continue;
            };
            // As OpenSSH: a line whose bounds exclude the signing time does not apply
            // (a later line may list the same key for another period).
            match key_time(v.trim_matches('"')) {
                Some(t) if after && signed_at < t => {
                    why = format!("the key is valid only after {v} ({principals})");
                    continue 'lines;
                }
                Some(t) if !after && signed_at > t => {
                    why = format!("the key expired at {v} ({principals})");
                    continue 'lines;
                }
                Some(_) => {}
                None => {
                    why = format!(
                        "cannot read {opt}{v} in the allowed signers file; expected YYYYMMDD[HHMM[SS]][Z]"
                    );
                    continue 'lines;
                }
            }
        }
        if let Err(e) = key.verify("git", data, &sig) {
            return untrusted(format!("the signature does not verify: {e}"));
        }
        let allowed = principals
            .split(',')
            .any(|p| p == "*" || p.eq_ignore_ascii_case(committer));
        if allowed {
            return SignatureStatus::Verified {
                signer: principals.to_string(),
            };
        }
        // Another line may list the same key for the committer.
        why = format!("signed by a key of {principals}, but committed by {committer}");
    }
    untrusted(why)
}

/// `YYYYMMDD[HHMM[SS]][Z]` (ssh-keygen's time format; read as UTC) in Unix seconds.
pub(super) fn key_time(v: &str) -> Option<i64> {
    let v = v.strip_suffix('Z').unwrap_or(v);
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| v.get(r).map(|x| x.parse::<i16>().ok());
    let (y, mo, d) = (n(0..4)??, n(4..6)?? as i8, n(6..8)?? as i8);
    let (h, mi, sec) = match v.len() {
        8 => (0, 0, 0),
        12 => (n(8..10)?? as i8, n(10..12)?? as i8, 0),
        14 => (n(8..10)?? as i8, n(10..12)?? as i8, n(12..14)?? as i8),
        _ => return None,
    };
    let dt = jiff::civil::DateTime::new(y, mo, d, h, mi, sec, 0).ok()?;
    Some(
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp()
            .as_second(),
    )
}
