#!/usr/bin/env bash
# Builds the AUR package from this checkout as an unprivileged user, the way an AUR helper would
# (makepkg, with check()), lists it, and installs it into a throwaway pacman root:
#   sudo packaging/aur/ci-build.sh OUTDIR [USER]
# The published PKGBUILD downloads the release tarball; here the source is `git archive HEAD`.
# Needs: makepkg pacman-package-manager libarchive-tools fakeroot zstd, and a cargo for USER
# (Debian's cargo-web: /usr/bin/cargo).
set -euo pipefail
out=${1:?usage: ci-build.sh OUTDIR [USER]}
user=${2:-builder}
repo=$(cd "$(dirname "$0")/../.." && pwd)
pkgver=$(sed -n 's/^pkgver=//p' "$repo/packaging/aur/PKGBUILD")
mkdir -p "$out"
out=$(cd "$out" && pwd)
tarball="mirror-agent-$pkgver.tar.gz"
git -C "$repo" archive --format=tar.gz --prefix="mirror-agent-$pkgver/" -o "$out/$tarball" HEAD
sum=$(sha256sum "$out/$tarball" | cut -d' ' -f1)
sed -e "s|^source=.*|source=(\"$tarball\")|" -e "s|^sha256sums=.*|sha256sums=('$sum')|" \
  "$repo/packaging/aur/PKGBUILD" > "$out/PKGBUILD"
chown -R "$user" "$out"
home=$(getent passwd "$user" | cut -d: -f6)
(cd "$out" && runuser -u "$user" -- env -i HOME="$home" PATH=/usr/bin:/bin LANG=C.UTF-8 \
  PKGEXT=.pkg.tar.zst makepkg -f --nodeps --noconfirm)
pkg=$(ls "$out"/mirror-agent-"$pkgver"-*.pkg.tar.zst)
bsdtar -tvf "$pkg"
root="$out/root"
mkdir -p "$root/var/lib/pacman"
pacman -U --noconfirm --nodeps --nodeps --root "$root" --dbpath "$root/var/lib/pacman" "$pkg" 2>&1 \
  | grep -v 'failed to initialize alpm library' || true
"$root/usr/bin/mirror-agent" --version
test -f "$root/usr/lib/systemd/user/mirror-agent.service"
test -f "$root/usr/share/licenses/mirror-agent/LICENSE-MIT"
echo "built and installed $pkg"
