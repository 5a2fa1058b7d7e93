#!/usr/bin/env bash
# Installs the Debian packages listed in .ci/apt-packages.txt (one per line, '#' starts a comment) unless they
# are all installed already. Needs root. Used by CI and by developers before running the netns tests.
set -euo pipefail
list="$(dirname "$0")/apt-packages.txt"
missing=()
while read -r pkg _; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < "$list"
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "apt packages already installed: $(grep -v '^#' "$list" | tr '\n' ' ')"
fi
