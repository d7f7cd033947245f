#!/bin/sh
# Installs mirror-agent as a LaunchAgent of the current user and loads it:
#   sh packaging/launchd/install.sh [/path/to/mirror-agent]
# launchd expands neither ~ nor $VARS, so the plist gets absolute paths written here.
set -eu
label=io.github.mirror-agent
bin=${1:-$(command -v mirror-agent || echo /usr/local/bin/mirror-agent)}
case $bin in /*) ;; *) echo "install.sh: the binary path must be absolute: $bin" >&2; exit 1 ;; esac
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
agents="$HOME/Library/LaunchAgents"
logs="$HOME/Library/Logs"
mkdir -p "$agents" "$logs"
plist="$agents/$label.plist"
sed -e "s|/usr/local/bin/mirror-agent|$bin|" -e "s|/Users/USER|$HOME|g" "$here/$label.plist" > "$plist"
if [ "${MIRROR_NO_LOAD:-}" = 1 ]; then
  echo "wrote $plist (not loaded)"
  exit 0
fi
launchctl bootout "gui/$(id -u)/$label" 2>/dev/null || true
launchctl bootstrap "gui/$(id -u)" "$plist"
echo "loaded $label; logs in $logs/mirror-agent.log; stop with: launchctl bootout gui/$(id -u)/$label"
