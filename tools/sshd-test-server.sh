#!/usr/bin/env bash
# sshd-test-server.sh up|down|status -- a throwaway OpenSSH server on
# 127.0.0.1 for the end-to-end tests of SSH remotes (tests/e2e_remote.rs).
#
#   up      install Debian's openssh-server and openssh-client with apt-get
#           (if missing), generate a host key and a user key, and start
#           /usr/sbin/sshd as root without systemd on a free port of
#           127.0.0.1, accepting only that user key for the current user.
#           Writes $DIR/env (MRBM_SSHD_HOST, _PORT, _USER, _KEY, _KNOWN_HOSTS)
#           and $DIR/ssh_config (a Host `mrbm-test` to use with `ssh -F`).
#           Idempotent: when the server already answers, it only checks it.
#   down    stop the sshd this script started (by the pid it recorded).
#   status  exit 0 if the server answers a login with the user key.
#
# Environment:
#   MRBM_SSHD_DIR=/tmp/mrbm-sshd   keys, config, pid file, log
#
# The tests find the server through $MRBM_SSHD_DIR/env (same default).
set -euo pipefail

DIR=${MRBM_SSHD_DIR:-/tmp/mrbm-sshd}

log() { printf '[sshd-test-server] %s\n' "$*"; }
die() {
  echo "[sshd-test-server] error: $*" >&2
  [ -f "$DIR/sshd.log" ] && tail -n 30 "$DIR/sshd.log" >&2
  exit 1
}

answers() {
  [ -f "$DIR/env" ] || return 1
  # shellcheck disable=SC1091
  . "$DIR/env"
  timeout 10 ssh -F "$DIR/ssh_config" mrbm-test true >/dev/null 2>&1
}

free_port() {
  local p
  for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

up() {
  if answers; then
    log "already up on 127.0.0.1:$MRBM_SSHD_PORT"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts sshd)"
  if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then
    log "apt-get install openssh-server openssh-client"
    export DEBIAN_FRONTEND=noninteractive
    # Without systemd the postinst would try to start the daemon.
    local remove_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; remove_policy=1
    fi
    mkdir -p "$DIR"
    if ! apt-get install -y -q --no-install-recommends openssh-server openssh-client > "$DIR/apt.log" 2>&1; then
      apt-get update -q >> "$DIR/apt.log" 2>&1
      apt-get install -y -q --no-install-recommends openssh-server openssh-client >> "$DIR/apt.log" 2>&1 \
        || { [ "$remove_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -n 30 "$DIR/apt.log"; die "apt-get install failed"; }
    fi
    [ "$remove_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
  down quiet
  rm -rf "$DIR"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  ssh-keygen -q -t ed25519 -N '' -C mrbm-test-host -f "$DIR/host_key"
  ssh-keygen -q -t ed25519 -N '' -C mrbm-test-user -f "$DIR/user_key"
  # A second key the server does not accept (the permission-denied test).
  ssh-keygen -q -t ed25519 -N '' -C mrbm-test-stranger -f "$DIR/stranger_key"
  cp "$DIR/user_key.pub" "$DIR/authorized_keys"
  chmod 600 "$DIR/authorized_keys"
  mkdir -p /run/sshd
  chmod 755 /run/sshd
  local port user
  port=$(free_port) || die "no free port found"
  user=$(id -un)
  cat > "$DIR/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $DIR/host_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers $user
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
MaxStartups 100:30:200
MaxSessions 50
EOF
  printf '[127.0.0.1]:%s %s\n' "$port" "$(cut -d' ' -f1,2 "$DIR/host_key.pub")" > "$DIR/known_hosts"
  cat > "$DIR/ssh_config" <<EOF
Host mrbm-test
  HostName 127.0.0.1
  Port $port
  User $user
  IdentityFile $DIR/user_key
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
  /usr/sbin/sshd -t -f "$DIR/sshd_config" || die "sshd rejected its configuration"
  /usr/sbin/sshd -f "$DIR/sshd_config" -E "$DIR/sshd.log"
  cat > "$DIR/env" <<EOF
MRBM_SSHD_HOST=127.0.0.1
MRBM_SSHD_PORT=$port
MRBM_SSHD_USER=$user
MRBM_SSHD_KEY=$DIR/user_key
MRBM_SSHD_STRANGER_KEY=$DIR/stranger_key
MRBM_SSHD_KNOWN_HOSTS=$DIR/known_hosts
EOF
  local i
  for i in $(seq 1 50); do
    answers && { log "up on 127.0.0.1:$port (pid $(cat "$DIR/sshd.pid"), user $user)"; return 0; }
    sleep 0.2
  done
  die "sshd does not answer on 127.0.0.1:$port"
}

down() {
  if [ -f "$DIR/sshd.pid" ]; then
    local pid
    pid=$(cat "$DIR/sshd.pid")
    if [ -n "$pid" ] && [ -e "/proc/$pid" ]; then
      kill "$pid" 2>/dev/null || true
      [ "${1:-}" = quiet ] || log "stopped sshd (pid $pid)"
    fi
    rm -f "$DIR/sshd.pid"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) answers || exit 1 ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
