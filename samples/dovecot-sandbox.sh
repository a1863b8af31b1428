#!/usr/bin/env bash
# A throwaway Dovecot (POP3 + IMAP, with TLS) on 127.0.0.1, for trying popvault and for benchmarks.
#
#   samples/dovecot-sandbox.sh start DIR [MESSAGE_FILE...]   start it; DIR holds everything
#   samples/dovecot-sandbox.sh stop DIR                      stop it (DIR is left for you to remove)
#
# User `alice`, password `secret`. Ports: $POP3_PORT (11110, STLS), $POP3S_PORT (11995),
# $IMAP_PORT (11143, STARTTLS), $IMAPS_PORT (11993). The self-signed CA is DIR/ca.pem.
# $DOVECOT_EXTRA, if set, is appended to its configuration (e.g. "default_vsz_limit = 2G").
# Installs Dovecot with apt-get when it is missing and you are root.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,10p' "$0" >&2; exit 2; }
POP3_PORT=${POP3_PORT:-11110}; POP3S_PORT=${POP3S_PORT:-11995}
IMAP_PORT=${IMAP_PORT:-11143}; IMAPS_PORT=${IMAPS_PORT:-11993}

if [ "$cmd" = stop ]; then
    [ -f "$dir/dovecot.pid" ] && kill -- "-$(cat "$dir/dovecot.pid")" 2>/dev/null || true
    rm -f "$dir/dovecot.pid"
    exit 0
fi
[ "$cmd" = start ] || { echo "unknown command $cmd" >&2; exit 2; }
shift 2

if ! [ -x /usr/sbin/dovecot ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing dovecot-pop3d dovecot-imapd..." >&2
        policy=/usr/sbin/policy-rc.d; added=
        [ -e $policy ] || { printf '#!/bin/sh\nexit 101\n' > $policy; chmod +x $policy; added=1; }
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-pop3d dovecot-imapd >/dev/null
        [ -n "$added" ] && rm -f $policy
    else
        echo "error: Dovecot is not installed: apt-get install dovecot-pop3d dovecot-imapd" >&2; exit 1
    fi
fi

mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
chmod 755 "$dir"
if [ "$(id -u)" = 0 ]; then owner=nobody; group=$(id -gn nobody); users=""
else owner=$(id -un); group=$(id -gn); users="default_login_user = $owner
default_internal_user = $owner"; fi
uid=$(id -u "$owner"); gid=$(getent group "$group" | cut -d: -f3)

# A private CA and a server certificate for 127.0.0.1 signed by it.
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -days 2 -subj "/CN=popvault sandbox CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req $ec -subj /CN=127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$dir/cert.ext"
openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/cert.ext" -out "$dir/cert.pem" 2>/dev/null
echo 'alice:{PLAIN}secret::::::' > "$dir/passwd"
mkdir -p "$dir/home/Maildir/"{new,cur,tmp}
n=0
for f in "$@"; do
    n=$((n + 1))
    # Maildir files hold LF line endings; Dovecot serves them with CRLF.
    sed 's/\r$//' "$f" > "$dir/home/Maildir/new/$(date +%s).sample$n.localhost"
done
chown -R "$owner:$group" "$dir/home"
cat > "$dir/dovecot.conf" <<CONF
instance_name = popvault-sandbox-$$
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
listen = 127.0.0.1
protocols = pop3 imap
$users
ssl = yes
ssl_cert = <$dir/cert.pem
ssl_key = <$dir/key.pem
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login apop
first_valid_uid = 1
mail_location = maildir:$dir/home/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/passwd
}
userdb {
  driver = static
  args = uid=$uid gid=$gid home=$dir/home
}
service pop3-login {
  inet_listener pop3 {
    port = $POP3_PORT
  }
  inet_listener pop3s {
    port = $POP3S_PORT
    ssl = yes
  }
}
service imap-login {
  inet_listener imap {
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = $IMAPS_PORT
    ssl = yes
  }
}
${DOVECOT_EXTRA:-}
CONF
setsid /usr/sbin/dovecot -F -c "$dir/dovecot.conf" >"$dir/stderr.log" 2>&1 &
echo $! > "$dir/dovecot.pid"
for _ in $(seq 100); do
    # Dovecot gone means it could not start (a port in use, say): its log says why.
    kill -0 "$(cat "$dir/dovecot.pid")" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$POP3_PORT") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$IMAPS_PORT") 2>/dev/null; then
        sleep 0.2
        kill -0 "$(cat "$dir/dovecot.pid")" 2>/dev/null && exit 0
        break
    fi
    sleep 0.1
done
echo "error: Dovecot did not start; see $dir/dovecot.log and $dir/stderr.log" >&2
cat "$dir/stderr.log" >&2
exit 1
