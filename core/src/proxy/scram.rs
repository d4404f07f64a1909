//! SCRAM-SHA-256 (RFC 5802/7677, as PostgreSQL speaks it), both ways: as a client, when the server asks a
//! password role for it (a static password behind the proxy); as a server, for the proxy's own local
//! password, which clients on a non-loopback listener must prove (`--allow-remote`). Toward the server,
//! channel binding is not used (`n,,`): that hop is inside TLS checked by the sslmode. Toward clients whose
//! hop is TLS, SCRAM-SHA-256-PLUS is offered with `tls-server-end-point` binding, so an exchange relayed by
//! someone in between (who would hold another certificate) fails.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom as _};
use std::num::NonZeroU32;

/// The mechanism name on the wire.
pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";
/// The mechanism with channel binding, offered to clients on TLS.
pub(crate) const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Iterations of the local secret (PostgreSQL's default).
const ITERATIONS: u32 = 4096;
/// The most iterations a server may ask for: 25 times PostgreSQL's default. Each one costs a session an
/// HMAC, so an unbounded count from a misconfigured or hostile server would stall the proxy's threads.
pub(crate) const MAX_ITERATIONS: u32 = 100_000;

/// Why a SCRAM exchange failed (secret-free).
#[derive(Debug, thiserror::Error)]
#[error("SCRAM-SHA-256: {0}")]
pub struct ScramError(pub(crate) String);

fn fail(what: impl Into<String>) -> ScramError {
    ScramError(what.into())
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// The password as SCRAM hashes it: SASLprep'd (RFC 4013), or as it is when SASLprep rejects it (e.g. a
/// control character), as PostgreSQL does on both sides — so a non-ASCII password matches the server's.
fn prepared(password: &str) -> std::borrow::Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Result<[u8; 32], ScramError> {
    let iterations =
        NonZeroU32::new(iterations).ok_or_else(|| fail("the server asked for 0 iterations"))?;
    let mut out = [0; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        prepared(password).as_bytes(),
        &mut out,
    );
    Ok(out)
}

fn nonce() -> Result<String, ScramError> {
    let mut bytes = [0; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| fail("no random numbers from the system"))?;
    Ok(B64.encode(bytes))
}

/// Equality without an early exit: how long the check takes says nothing about where a guess went wrong.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `key=value` attributes of a SCRAM message.
fn attribute(message: &str, key: char) -> Option<&str> {
    message
        .split(',')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

/// The client side of one exchange with the server.
pub(crate) struct Client {
    client_first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl Client {
    /// Starts an exchange; the first message's body (a SASLInitialResponse's data).
    pub(crate) fn start() -> Result<(Self, String), ScramError> {
        // PostgreSQL takes the user from the start-up message and ignores this one.
        Ok(Self::with_nonce("", nonce()?))
    }

    /// An exchange for `user` with a given nonce (tests use RFC 7677's).
    fn with_nonce(user: &str, nonce: String) -> (Self, String) {
        let client_first_bare = format!("n={user},r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            Self {
                client_first_bare,
                nonce,
                server_signature: None,
            },
            first,
        )
    }

    /// The client-final message answering `server_first`, proving `password`.
    pub(crate) fn finish(
        &mut self,
        server_first: &str,
        password: &str,
    ) -> Result<String, ScramError> {
        let nonce = attribute(server_first, 'r').ok_or_else(|| fail("no nonce from the server"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(fail("the server's nonce does not extend ours"));
        }
        let salt = attribute(server_first, 's')
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| fail("no salt from the server"))?;
        let iterations: u32 = attribute(server_first, 'i')
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| fail("no iteration count from the server"))?;
        if iterations > MAX_ITERATIONS {
            return Err(fail(format!(
                "the server asks for {iterations} iterations, more than pgwi accepts ({MAX_ITERATIONS}; \
                 PostgreSQL's default is {ITERATIONS}): set the role's password again with a lower \
                 scram_iterations"
            )));
        }
        let salted = zeroize::Zeroizing::new(salted_password(password, &salt, iterations)?);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_key = zeroize::Zeroizing::new(hmac(&*salted, b"Client Key"));
        let signature = hmac(&sha256(&client_key), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        self.server_signature = Some(hmac(
            &hmac(&*salted, b"Server Key"),
            auth_message.as_bytes(),
        ));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server's final message: it proves the server knew the password too.
    pub(crate) fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or_else(|| fail("the server finished before we did"))?;
        if let Some(error) = attribute(server_final, 'e') {
            return Err(fail(format!("the server refused the proof: {error}")));
        }
        match attribute(server_final, 'v').and_then(|v| B64.decode(v).ok()) {
            Some(signature) if &signature == expected => Ok(()),
            _ => Err(fail("the server's signature does not match")),
        }
    }
}

/// The proxy's local password as a SCRAM verifier: the password itself is not kept.
pub struct LocalSecret {
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for LocalSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalSecret(<redacted>)")
    }
}

impl LocalSecret {
    /// The verifier of `password`, with a fresh salt.
    pub fn new(password: &str) -> Result<Self, ScramError> {
        let salt = B64
            .decode(nonce()?)
            .map_err(|_| fail("could not make a salt"))?;
        Self::with_salt(password, salt)
    }

    fn with_salt(password: &str, salt: Vec<u8>) -> Result<Self, ScramError> {
        let salted = zeroize::Zeroizing::new(salted_password(password, &salt, ITERATIONS)?);
        Ok(Self {
            stored_key: sha256(&hmac(&*salted, b"Client Key")),
            server_key: hmac(&*salted, b"Server Key"),
            salt,
        })
    }
}

/// Channel binding on the client's hop: what the proxy offered, and what the client chose.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binding<'a> {
    /// The hop is plaintext: only SCRAM-SHA-256 was offered.
    NotOffered,
    /// The hop is TLS and the client chose SCRAM-SHA-256: it may not support binding (`n`), but one that
    /// does and believes the proxy does not (`y`) saw an offer someone in between removed.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: it must bind to this certificate hash.
    Required(&'a [u8]),
}

/// The server side of one exchange with a client.
pub(crate) struct Server<'a> {
    secret: &'a LocalSecret,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The `c=` attribute the client-final message must carry: the GS2 header and the binding data.
    channel_binding: String,
}

impl<'a> Server<'a> {
    /// Reads the client-first message; the server-first message to send.
    pub(crate) fn start(
        secret: &'a LocalSecret,
        client_first: &str,
        binding: Binding<'_>,
    ) -> Result<(Self, String), ScramError> {
        let (flag, authzid, bare) = client_first
            .split_once(',')
            .and_then(|(flag, rest)| {
                let (authzid, bare) = rest.split_once(',')?;
                Some((flag, authzid, bare))
            })
            .ok_or_else(|| fail("a malformed first message"))?;
        let mut channel_binding = format!("{flag},{authzid},").into_bytes();
        match (flag, binding) {
            ("n", Binding::NotOffered | Binding::Declined) | ("y", Binding::NotOffered) => {}
            ("y", _) => {
                return Err(fail(
                    "the client supports channel binding but was not offered it: something between the \
                     client and the proxy removed SCRAM-SHA-256-PLUS",
                ));
            }
            ("p=tls-server-end-point", Binding::Required(end_point)) => {
                channel_binding.extend(end_point);
            }
            (_, Binding::Required(_)) => {
                return Err(fail(
                    "SCRAM-SHA-256-PLUS without tls-server-end-point binding",
                ));
            }
            _ => return Err(fail("channel binding without SCRAM-SHA-256-PLUS")),
        }
        let bare = bare.to_owned();
        let client_nonce = attribute(&bare, 'r').ok_or_else(|| fail("no client nonce"))?;
        let nonce = format!("{client_nonce}{}", nonce()?);
        Ok(Self::with_nonce(
            secret,
            B64.encode(channel_binding),
            bare,
            nonce,
        ))
    }

    fn with_nonce(
        secret: &'a LocalSecret,
        channel_binding: String,
        bare: String,
        nonce: String,
    ) -> (Self, String) {
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&secret.salt));
        (
            Self {
                secret,
                client_first_bare: bare,
                server_first: server_first.clone(),
                nonce,
                channel_binding,
            },
            server_first,
        )
    }

    /// Checks the client's proof; the server-final message to send.
    pub(crate) fn finish(&self, client_final: &str) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or_else(|| fail("no proof"))?;
        if attribute(without_proof, 'c') != Some(self.channel_binding.as_str()) {
            return Err(fail("the channel binding does not match the first message"));
        }
        if attribute(without_proof, 'r') != Some(self.nonce.as_str()) {
            return Err(fail("the nonce does not match"));
        }
        let proof = B64.decode(proof).map_err(|_| fail("a malformed proof"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(fail("a proof of the wrong length"));
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if !same(&sha256(&client_key), &self.secret.stored_key) {
            return Err(fail("wrong password"));
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn the_client_side_reproduces_rfc_7677() {
        // Proves: the client's messages and its check of the server's signature match RFC 7677's example.
        let (mut client, first) = Client::with_nonce("user", CLIENT_NONCE.into());
        assert_eq!(first, format!("n,,n=user,r={CLIENT_NONCE}"));
        let last = client.finish(SERVER_FIRST, "pencil").expect("finish");
        assert_eq!(last, CLIENT_FINAL);
        client
            .verify(SERVER_FINAL)
            .expect("the RFC's server signature");
        assert!(client.verify("v=AAAA").is_err());
    }

    #[test]
    fn the_server_side_reproduces_rfc_7677_and_refuses_a_wrong_password() {
        // Proves: the local password's verifier, with the RFC's salt and nonce, accepts the RFC's proof and
        // answers with the RFC's server signature; another password's proof is refused.
        let salt = B64.decode(SALT).expect("salt");
        let secret = LocalSecret::with_salt("pencil", salt.clone()).expect("secret");
        let bare = format!("n=user,r={CLIENT_NONCE}");
        let (server, first) =
            Server::with_nonce(&secret, B64.encode("n,,"), bare.clone(), NONCE.into());
        assert_eq!(first, SERVER_FIRST);
        assert_eq!(server.finish(CLIENT_FINAL).expect("proof"), SERVER_FINAL);

        let other = LocalSecret::with_salt("not pencil", salt).expect("secret");
        let (server, _) = Server::with_nonce(&other, B64.encode("n,,"), bare, NONCE.into());
        assert!(server.finish(CLIENT_FINAL).is_err());
    }

    #[test]
    fn passwords_are_saslprepped_and_kept_raw_when_saslprep_refuses_them() {
        // Proves: a non-ASCII password is normalised as PostgreSQL does (NFKC, soft hyphen and non-ASCII
        // spaces mapped), so both forms give the same salted password; one SASLprep refuses (a control
        // character) is hashed as it is.
        let salt = b"salt";
        let salted = |p: &str| salted_password(p, salt, 4096).expect("salted");
        assert_eq!(salted("\u{2168}"), salted("IX"));
        assert_eq!(salted("I\u{00AD}X"), salted("IX"));
        assert_eq!(salted("p\u{00A0}w"), salted("p w"));
        assert_ne!(salted("caf\u{e9}"), salted("cafe"));
        assert_eq!(prepared("a\u{7}b"), "a\u{7}b");
    }

    #[test]
    fn a_server_asking_for_too_many_iterations_or_sending_an_error_is_refused() {
        // Proves: an iteration count above the cap fails with an error naming the count and the cap, before
        // any hashing; a server-final `e=` is reported as the server's error.
        let (mut client, _) = Client::with_nonce("", CLIENT_NONCE.into());
        let greedy = format!("r={NONCE},s={SALT},i=4000000000");
        let error = client.finish(&greedy, "pencil").expect_err("refused");
        assert!(error.to_string().contains("4000000000") && error.to_string().contains("100000"));

        let (mut client, _) = Client::with_nonce("user", CLIENT_NONCE.into());
        client.finish(SERVER_FIRST, "pencil").expect("finish");
        let error = client.verify("e=invalid-proof").expect_err("refused");
        assert!(error.to_string().contains("invalid-proof"), "{error}");
    }

    #[test]
    fn channel_binding_is_required_as_chosen_and_a_removed_offer_is_caught() {
        // Proves: with PLUS chosen, only `p=tls-server-end-point` with the certificate's hash in `c=` passes
        // (another hash fails, as a relay's would); a client saying `y` (supports binding, saw no offer)
        // over TLS is refused, over plaintext accepted; `n` is accepted unless PLUS was chosen.
        let secret = LocalSecret::new("pencil").expect("secret");
        let hash = [7_u8; 32];
        let first = format!("p=tls-server-end-point,,n=,r={CLIENT_NONCE}");
        let (server, _) = Server::start(&secret, &first, Binding::Required(&hash)).expect("start");
        let expected = [&b"p=tls-server-end-point,,"[..], &hash].concat();
        assert_eq!(server.channel_binding, B64.encode(&expected));
        let relayed = [&b"p=tls-server-end-point,,"[..], &[8_u8; 32]].concat();
        let final_message = format!("c={},r={},p=AAAA", B64.encode(relayed), server.nonce);
        let error = server
            .finish(&final_message)
            .expect_err("another certificate's hash");
        assert!(error.to_string().contains("channel binding"), "{error}");

        let plain = format!("n,,n=,r={CLIENT_NONCE}");
        let supports = format!("y,,n=,r={CLIENT_NONCE}");
        assert!(Server::start(&secret, &plain, Binding::Required(&hash)).is_err());
        assert!(Server::start(&secret, &supports, Binding::Declined).is_err());
        assert!(Server::start(&secret, &supports, Binding::NotOffered).is_ok());
        assert!(Server::start(&secret, &plain, Binding::Declined).is_ok());
        assert!(Server::start(&secret, &first, Binding::NotOffered).is_err());
    }
}
