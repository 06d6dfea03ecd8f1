# Shared helpers for the scripts in this directory. Source it; do not run it.

# Every tool the scripts and tests use, with the Debian package that provides it.
IUK_TOOLS=(
  "mksquashfs:squashfs-tools"
  "unsquashfs:squashfs-tools"
  "gensquashfs:squashfs-tools-ng"
  "rdsquashfs:squashfs-tools-ng"
  "sqfsdiff:squashfs-tools-ng"
  "xorriso:xorriso"
  "gpg:gnupg"
  "setfattr:attr"
  "setfacl:acl"
  "strace:strace"
  "fusefat:fusefat"
  "mkfs.vfat:dosfstools"
  "rsync:rsync"
  "faketime:faketime"
  "python3:python3"
)

# Installs the Debian packages of every missing tool (apt-get update first), skipping what is present.
iuk_ensure_packages() {
  local missing=() entry tool pkg
  for entry in "${IUK_TOOLS[@]}"; do
    tool=${entry%%:*}
    pkg=${entry##*:}
    if ! command -v "$tool" >/dev/null 2>&1; then
      case " ${missing[*]} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
    fi
  done
  if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
      echo "missing packages: ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
      return 1
    fi
    echo "installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install a Rust toolchain >= 1.85 (https://rustup.rs), then run this again" >&2
    return 1
  fi
}

# Prints the skips logged in file $1 (one reason a line): `N skipped: <reason> (×count), ...`,
# most frequent first, or `0 skipped`.
iuk_skip_summary() {
  local n
  n=$(wc -l <"$1")
  if [ "$n" -eq 0 ]; then
    echo "0 skipped"
    return
  fi
  echo "$n skipped: $(sort "$1" | uniq -c | sort -k1,1nr -k2 |
    sed -E 's/^ *([0-9]+) (.*)$/\2 (×\1)/' | paste -sd '\t' | sed 's/\t/, /g')"
}
