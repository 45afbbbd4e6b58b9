#!/usr/bin/env bash
# Installs the system tools the tests use, when missing: iproute2 (ip, tc: the WAN and
# namespace tests), poppler-utils (pdfinfo, pdftotext: the PDF report tests), and Debian's
# chromium with chromium-driver (the dashboard's browser tests), openssh-client (ssh-agent,
# ssh-add: signing with an agent-held admin key), and systemd (systemd-analyze: the packaged
# unit is verified) with dpkg (dpkg-deb), nftables and jq (the NAT test), and cargo-deb (the package test builds the .deb with
# it; `cargo install`, about a minute, when missing). Run by .ci/run
# and by the tests themselves when a tool is missing, so `cargo test --workspace` works on a
# fresh Debian machine (as root).
set -euo pipefail
need=()
command -v ip > /dev/null && command -v tc > /dev/null || need+=(iproute2)
command -v pdftotext > /dev/null && command -v pdfinfo > /dev/null || need+=(poppler-utils)
command -v chromium > /dev/null || need+=(chromium)
command -v chromedriver > /dev/null || need+=(chromium-driver)
command -v ssh-agent > /dev/null && command -v ssh-add > /dev/null || need+=(openssh-client)
command -v systemd-analyze > /dev/null || need+=(systemd)
command -v dpkg-deb > /dev/null || need+=(dpkg)
command -v nft > /dev/null || need+=(nftables)
command -v jq > /dev/null || need+=(jq)
if ! cargo deb --version > /dev/null 2>&1; then
  cargo install cargo-deb --locked --version 3.8.0 > /dev/null 2>&1 ||
    { echo "could not install cargo-deb" >&2; exit 1; }
fi
[ ${#need[@]} -eq 0 ] && exit 0
command -v apt-get > /dev/null || { echo "missing ${need[*]} and no apt-get to install them" >&2; exit 1; }
apt-get install -y -qq "${need[@]}" > /dev/null 2>&1 ||
  { apt-get update -qq > /dev/null && apt-get install -y -qq "${need[@]}" > /dev/null; }
