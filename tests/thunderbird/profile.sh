#!/usr/bin/env bash
# Makes a fresh Thunderbird profile with POP3 accounts on 127.0.0.1 for run.sh.
#
#   profile.sh DIR PORT USER [STORE [HOST]]...
#
# Each STORE HOST pair after USER adds a POP3 account (default: one, mbox, 127.0.0.1): STORE
# is mbox or maildir; HOST names the same server differently (127.0.0.1, localhost) so that two
# accounts can read one test mailbox. Mail is left on the server, as most POP users have it.
set -euo pipefail
dir=$1 port=$2 user=$3
shift 3
[[ $# -gt 0 ]] || set -- mbox 127.0.0.1
mkdir -p "$dir"
n=0 accounts=""
{
    echo '// Mozilla User Preferences'
    while [[ $# -gt 0 ]]; do
        store=$1 host=${2:-127.0.0.1}
        shift; [[ $# -gt 0 ]] && shift
        n=$((n + 1))
        case $store in
            mbox) contract="@mozilla.org/msgstore/berkeleystore;1" ;;
            maildir) contract="@mozilla.org/msgstore/maildirstore;1" ;;
            *) echo "profile.sh: store is mbox or maildir, not $store" >&2; exit 2 ;;
        esac
        accounts="${accounts:+$accounts,}account$n"
        cat <<PREFS
user_pref("mail.account.account$n.server", "server$n");
user_pref("mail.account.account$n.identities", "id$n");
user_pref("mail.identity.id$n.useremail", "$user@example.com");
user_pref("mail.identity.id$n.fullName", "Test User");
user_pref("mail.server.server$n.type", "pop3");
user_pref("mail.server.server$n.hostname", "$host");
user_pref("mail.server.server$n.port", $port);
user_pref("mail.server.server$n.userName", "$user");
user_pref("mail.server.server$n.socketType", 0);
user_pref("mail.server.server$n.authMethod", 3);
user_pref("mail.server.server$n.leave_on_server", true);
user_pref("mail.server.server$n.login_at_startup", false);
user_pref("mail.server.server$n.check_new_mail", false);
user_pref("mail.server.server$n.directory-rel", "[ProfD]Mail/$host");
user_pref("mail.server.server$n.storeContractID", "$contract");
PREFS
    done
    local=$((n + 1))
    cat <<PREFS
user_pref("mail.accountmanager.accounts", "$accounts,account$local");
user_pref("mail.accountmanager.defaultaccount", "account1");
user_pref("mail.accountmanager.localfoldersserver", "server$local");
user_pref("mail.account.account$local.server", "server$local");
user_pref("mail.server.server$local.type", "none");
user_pref("mail.server.server$local.hostname", "Local Folders");
user_pref("mail.server.server$local.userName", "nobody");
user_pref("mail.server.server$local.directory-rel", "[ProfD]Mail/Local Folders");
user_pref("mail.shell.checkDefaultClient", false);
user_pref("mail.rights.version", 1);
user_pref("mail.spotlight.firstRunDone", true);
user_pref("mailnews.start_page.enabled", false);
user_pref("app.update.enabled", false);
user_pref("app.update.auto", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("extensions.update.enabled", false);
user_pref("mail.provider.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("mail.biff.show_alert", false);
user_pref("mailnews.downloadToTempFile", false);
PREFS
} > "$dir/user.js"
