//! Every secret the bench hands out in this process — role passwords, access tokens, service-account
//! tokens — so that a test can search a program's whole output for any of them.

use std::sync::Mutex;

static ISSUED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers `secret` (ignored when shorter than 8 characters: too likely to occur by chance).
pub fn register(secret: &str) {
    if secret.len() >= 8 {
        ISSUED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(secret.to_owned());
    }
}

/// Every secret registered so far.
pub fn issued() -> Vec<String> {
    ISSUED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The first registered secret that occurs in `text` is an error naming where: never the secret itself.
pub fn find_leak(text: &str) -> Option<String> {
    issued().iter().find_map(|secret| {
        text.find(secret.as_str()).map(|at| {
            format!(
                "a secret issued by the test bench ({} characters) appears at byte {at} of the output",
                secret.len()
            )
        })
    })
}
