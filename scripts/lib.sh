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
  "gzip:gzip"
  "xz:xz-utils"
  "cpio:cpio"
  "zip:zip"
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

# Prints the URI the machine's apt sources use for Debian suite $1 (bookworm, bookworm-security, …),
# read from /etc/apt/sources.list and /etc/apt/sources.list.d/ (one-line and deb822 forms), so no
# mirror's host name is written into the scripts. Fails with advice when no source names the suite.
iuk_apt_uri() {
  local suite=$1 uri
  uri=$(python3 - "$suite" /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources <<'PY'
import sys
want, files = sys.argv[1], sys.argv[2:]
def stanzas(text):
    block = {}
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            if block:
                yield block
            block = {}
        elif line[0] in " \t" and block:
            continue
        elif ":" in line:
            k, v = line.split(":", 1)
            block[k.strip().lower()] = v.split()
for f in files:
    try:
        text = open(f).read()
    except OSError:
        continue
    if f.endswith(".sources"):
        for b in stanzas(text):
            if "deb" in b.get("types", []) and want in b.get("suites", []) and \
               b.get("enabled", ["yes"])[0].lower() != "no" and b.get("uris"):
                print(b["uris"][0]); sys.exit(0)
    else:
        for line in text.splitlines():
            w = line.split("#", 1)[0].split()
            if w[:1] != ["deb"]:
                continue
            w = w[1:]
            if w and w[0].startswith("["):
                while w and not w[0].endswith("]"):
                    w = w[1:]
                w = w[1:]
            if len(w) >= 2 and w[1] == want:
                print(w[0]); sys.exit(0)
sys.exit(1)
PY
) || {
    echo "no apt source for the Debian suite $suite in /etc/apt/sources.list{,.d/}: add one (e.g. a deb line for your mirror) and run this again" >&2
    return 1
  }
  echo "$uri"
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
