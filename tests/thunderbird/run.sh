#!/usr/bin/env bash
# Runs the real Thunderbird (Debian's `thunderbird`, headless, no display needed) on a profile:
# it fetches the mail of every POP3 account of the profile, then does what $TB_ACTIONS asks,
# then quits. Used by the tests (tests/cli/thunderbird.rs) and the benchmark
# (bench/thunderbird.py) to get profiles as Thunderbird itself writes them.
#
#   run.sh PROFILE_DIR
#
# The profile's prefs.js (or user.js) says which accounts there are; make one with
# `profile.sh`. The password reaches Thunderbird through $TB_POP3_PASSWORD, read by an
# AutoConfig script that sets it in memory at startup: nothing is stored, no prompt is shown.
# The AutoConfig files live in a private copy of the program directory (symlinks to the Debian
# install, a copied thunderbird-bin, which finds its directory from its own path), so the
# system install is untouched.
#
# $TB_ACTIONS, one per line, run in order after the fetch, on the POP3 account of host
# $TB_ACT_ON (default: the first):
#   read N            mark the Nth message of the account's Inbox read (from 1)
#   flag N            mark it flagged (starred)
#   delete N          delete it (moved to Trash: Inbox keeps it marked deleted until compacted)
#   move N FOLDER     move it to FOLDER (A/B: nested), created under the account's root
#   compact           compact every folder of the account
# $TB_TIMEOUT: seconds Thunderbird may take (default 120; it fetches about 25 messages/s of
# the benchmark's mail).
set -euo pipefail
profile=$(realpath "$1")
[[ -f $profile/prefs.js || -f $profile/user.js ]] || { echo "run.sh: $profile has no prefs.js/user.js" >&2; exit 2; }
system=/usr/lib/thunderbird
[[ -x $system/thunderbird-bin ]] || { echo "run.sh: Thunderbird is not installed ($system); apt-get install thunderbird" >&2; exit 2; }
app=$(mktemp -d /tmp/tb-app.XXXXXX)
trap 'rm -rf "$app"' EXIT
for entry in "$system"/*; do
    name=$(basename "$entry")
    case $name in thunderbird-bin|defaults) ;; *) ln -s "$entry" "$app/$name" ;; esac
done
cp "$system/thunderbird-bin" "$app/"
mkdir -p "$app/defaults/pref"
for entry in "$system"/defaults/*; do
    [[ $(basename "$entry") == pref ]] || ln -s "$entry" "$app/defaults/"
done
for entry in "$system"/defaults/pref/*; do ln -s "$entry" "$app/defaults/pref/"; done
cat > "$app/defaults/pref/autoconfig.js" <<'JS'
pref("general.config.filename", "mozilla.cfg");
pref("general.config.obscure_value", 0);
pref("general.config.sandbox_enabled", false);
JS
cp "$(dirname "$0")/hook.js" "$app/mozilla.cfg"
export TB_DONE_FILE="$app/done"
# No update checks, telemetry or first-run pages: nothing talks to the internet.
export MOZ_DISABLE_AUTO_SAFE_MODE=1 MOZ_CRASHREPORTER_DISABLE=1 MOZ_HEADLESS=1
status=0
timeout "${TB_TIMEOUT:-120}" "$app/thunderbird-bin" --headless --profile "$profile" --no-remote \
    >"$app/out.log" 2>&1 || status=$?
if [[ ! -f $app/done ]] || [[ $(cat "$app/done") != ok ]]; then
    echo "run.sh: Thunderbird did not finish (exit $status)" >&2
    cat "$app/done" 2>/dev/null >&2 || true
    tail -30 "$app/out.log" >&2
    exit 1
fi
