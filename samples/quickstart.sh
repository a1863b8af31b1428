#!/usr/bin/env bash
# The whole job in a minute, without a POP account: starts a throwaway Dovecot on 127.0.0.1 holding
# a small sample mailbox, backs it up into the archive, proves the archive intact, lists it, and
# stops the server. The archive is the default one (~/.local/share/popvault), or $POPVAULT_ARCHIVE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
if [ -n "${POPVAULT_BIN:-}" ]; then
    popvault() { "$POPVAULT_BIN" "$@"; }
elif command -v popvault >/dev/null 2>&1; then
    popvault() { command popvault "$@"; }
else
    cargo build --release --quiet --manifest-path "$top/Cargo.toml"
    popvault() { "$top/target/release/popvault" "$@"; }
fi
server=$(mktemp -d /tmp/popvault-demo.XXXXXX)
trap '"$here/dovecot-sandbox.sh" stop "$server"; rm -rf "$server"' EXIT
"$here/dovecot-sandbox.sh" start "$server" "$top"/tests/corpus/{rfc5322-appendix-A_*,mikel-mail-plain_emails-basic_email,spamassassin-nice-00*,mime4j-testmsgs-simple-attachment}.eml
url="pop3://alice@127.0.0.1:${POP3_PORT:-11110}"

echo "\$ popvault backup $url --ca-file $server/ca.pem"
POPVAULT_PASSWORD=secret popvault backup "$url" --ca-file "$server/ca.pem"
echo "\$ popvault verify --full"
popvault verify --full
echo "\$ popvault list --account alice@127.0.0.1"
popvault list --account alice@127.0.0.1
