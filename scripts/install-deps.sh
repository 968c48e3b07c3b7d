#!/usr/bin/env bash
# Installs what Lifeboat's tests need on a fresh Debian machine (run as root):
# restic (interop tests read Lifeboat's repositories with it), moto's S3-protocol server, and
# the tools failover tests and drills drive (pgrep, script, dig, nft).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
command -v mount >/dev/null || need_apt+=(mount)
command -v pgrep >/dev/null || need_apt+=(procps)       # failover tests signal a server's children
command -v script >/dev/null || need_apt+=(bsdutils)    # a real terminal for typed confirmations
command -v dig >/dev/null || need_apt+=(bind9-dnsutils) # the DNS responder, queried by a real client
command -v nft >/dev/null || need_apt+=(nftables)       # partition-site drills cut a member off
command -v ip >/dev/null || need_apt+=(iproute2)        # a lab built by root: a network namespace per site
command -v openssl >/dev/null || need_apt+=(openssl)    # the API over TLS: certificates made in the tests
command -v curl >/dev/null || need_apt+=(curl)
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)   # the etcd client's protocol is compiled at build time
command -v etcd >/dev/null || need_apt+=(etcd-server)    # the coordinator: a real etcd in the tests
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || need_apt+=(libfaketime)  # one agent's wall clock stepped
command -v promtool >/dev/null || need_apt+=(prometheus)    # promtool tests the alert rules
command -v chromium >/dev/null || need_apt+=(chromium)       # the dashboard is tested in a real browser
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
/usr/bin/python3 -c "import aiosmtpd" 2>/dev/null || need_apt+=(python3-aiosmtpd)  # a real SMTP server for e-mail notifications
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install -q 'moto[server]'
restic version
python3 -c 'import moto; print("moto", moto.__version__)'
