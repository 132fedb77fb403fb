#!/bin/sh
# The Debian packages moeq builds against. `--check` (run by every make
# target) installs what is missing when run as root, else names it in one
# error; `--install` always runs apt-get. `--fuzz` does the same for what
# `make fuzz` needs on top (clang and its libFuzzer runtime).
# make and a C compiler come from build-essential: on a machine without
# make, run `apt-get install build-essential` first (this script is then
# run by `make deps` or any make target).
PKGS="build-essential libpcre2-dev libmicrohttpd-dev libjansson-dev pkg-config curl"
[ "$1" = "--fuzz" ] && PKGS="clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ "$1" = "--install" ] && [ -z "$missing" ] && missing="$PKGS"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "moeq: installing Debian packages:$missing" >&2
  (apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 ||
   { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends $missing >/dev/null; }) ||
   { echo "moeq: apt-get install failed for:$missing" >&2; exit 1; }
  exit 0
fi
echo "moeq: missing Debian packages:$missing (run: sudo apt-get install$missing)" >&2
exit 1
