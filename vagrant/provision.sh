#!/usr/bin/env bash
# Provisions the Vagrant VM (runs as root, idempotent: `vagrant provision` re-runs it after a
# change to the code). Installs a Rust toolchain if there is none, then lets the project's
# own commands do the rest: `cargo xtask install` runs `cargo xtask setup` (nightly rust-src,
# bpf-linker, the Debian and Python packages the demo and tests use), builds the release
# daemon and installs it with its systemd unit. The daemon then runs as a service that loads
# POLICY_DIR and governs the cgroup /react-gateway.
set -euo pipefail

REPO=${REPO:-/vagrant}
POLICY_DIR=${POLICY_DIR:-/vagrant/policies/examples}
export DEBIAN_FRONTEND=noninteractive

if ! command -v cargo >/dev/null && [ ! -x /root/.cargo/bin/cargo ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends build-essential curl ca-certificates git pkg-config
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain stable
fi
export PATH=/root/.cargo/bin:$PATH

cd "$REPO"
cargo xtask install

# The service loads the synced policy directory instead of /etc/react-gateway/policies.
mkdir -p /etc/systemd/system/react-gateway.service.d
cat > /etc/systemd/system/react-gateway.service.d/vagrant.conf <<UNIT
# Written by vagrant/provision.sh: policies come from the synced repository.
[Service]
ExecStart=
ExecStart=/usr/local/bin/react-gateway run --policy-dir $POLICY_DIR
UNIT
systemctl daemon-reload
systemctl enable react-gateway
systemctl restart react-gateway

# Wait for the daemon to answer on its control socket (bounded: 30 s).
for _ in $(seq 1 60); do
    if react-gateway status >/dev/null 2>&1; then
        break
    fi
    sleep 0.5
done
react-gateway status
echo
echo "react-gateway runs with the policies in $POLICY_DIR."
echo "Try: vagrant ssh -c 'sudo react-gateway exec -- curl -sI https://example.test/'"
echo "     vagrant ssh -c 'sudo react-gateway sessions list'"
