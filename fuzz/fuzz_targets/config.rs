//! Config files, and the server URLs and fingerprints in them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = popvault::config::Config::parse(&text) {
        for account in &config.accounts {
            let _ = popvault::account::Account::resolve(account, &Default::default());
        }
    }
    let _ = text.parse::<popvault::account::ServerUrl>();
    let _ = popvault::account::parse_fingerprint(&text);
    let _ = text.parse::<popvault::restore::Destination>();
});
