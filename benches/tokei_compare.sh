#!/usr/bin/env bash
# Compares codex repo-map's per-language counts and run time with tokei on a tree nobody here
# wrote (default: CPython's stdlib directory). Usage:
#   benches/tokei_compare.sh [TREE]
# Needs `tokei` on PATH (install outside the workspace, e.g.
#   CARGO_TARGET_DIR=/tmp/tokei-target cargo install tokei --locked --root /tmp/tokei-root)
# and builds the repo-map example in release mode (no candle, so it builds quickly).
#
# Known, explained differences (codex vs tokei 15):
# - codex counts ~27 languages (crates/codex-audit/src/lang.rs); files in the other ~280
#   tokei languages are counted as `other_files`, not per language. Only shared languages are
#   compared below.
# - HTML: tokei counts <script>/<style> bodies as child JavaScript/CSS; codex counts them as
#   HTML lines.
# - `.gitignore` is honoured outside git repositories too (tokei needs a .git directory). So
#   a gitignored file is skipped (onig_sys's oniguruma/tis-ci/config.h), and a hidden file
#   whitelisted by a `!.*.yml` rule is counted (hex-0.4.3/.gitlab-ci.yml), where tokei does
#   the opposite.
# - UTF-16 files: tokei transcodes them; codex counts bytes, so UTF-16 text is mis-split.
# - Jupyter notebooks are not counted by codex.
# - Files with a NUL byte in their first 8 KiB (binary) are skipped by codex and listed as
#   skipped; tokei counts their bytes as lines of the extension's language.
# - Code fences (in Markdown, and in Rust doc comments, which tokei parses as Markdown) whose
#   language tokei knows but codex does not (```tex, ```abnf, ```swift, ```jinja2, ...): tokei
#   counts the body as that language's code, codex as Markdown comment lines, so a few Rust and
#   Markdown files move lines between code and comments (on ~/.cargo/registry/src: 30 of
#   19,055 Rust files and 5 of 1,072 Markdown files).
# On CPython 3.11's stdlib every shared language is equal (files, code, comments, blanks).
set -euo pipefail
tree="${1:-$(python3 -c 'import sysconfig;print(sysconfig.get_paths()["stdlib"])')}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/examples/repo_map"
# CODEX_NO_BUILD=1 reuses an existing build (the shared target dir may be locked for long).
if [ -z "${CODEX_NO_BUILD:-}" ]; then
  cargo build --release -q -p codex-audit --example repo_map --manifest-path "$root/Cargo.toml"
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
best() { # best-of-3 wall time in seconds of "$@" (output to $tmp/out)
  local b=""; for _ in 1 2 3; do
    local s e; s=$(date +%s.%N); "$@" > "$tmp/out"; e=$(date +%s.%N)
    local t; t=$(echo "$e - $s" | bc); if [ -z "$b" ] || (( $(echo "$t < $b" | bc) )); then b=$t; fi
  done; echo "$b"; }
t_tokei=$(best tokei -o json "$tree"); cp "$tmp/out" "$tmp/tokei.json"
t_codex=$(best "$bin" "$tree"); cp "$tmp/out" "$tmp/codex.json"
python3 - "$tmp/tokei.json" "$tmp/codex.json" "$t_tokei" "$t_codex" "$tree" <<'PY'
import json, sys
tk, cx = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
def summ(st):  # tokei's summarise(): fold child blobs (doc comments, code fences) into the parent
    c, m, b = st["code"], st["comments"], st["blanks"]
    for blob in st.get("blobs", {}).values():
        x = summ(blob); c += x[0]; m += x[1]; b += x[2]
    return c, m, b
names = {"Sh": "Shell", "Text": "Plain Text", "CHeader": "C Header", "Cpp": "C++", "CppHeader": "C++ Header",
         "Toml": "TOML", "Yaml": "YAML", "Json": "JSON", "Css": "CSS", "Ini": "INI", "Xml": "XML",
         "Svg": "SVG", "Bash": "BASH", "Html": "HTML"}
tok = {}
for lang, v in tk.items():
    if lang == "Total": continue
    agg = [0, 0, 0, 0]
    for r in v["reports"]:
        c, m, b = summ(r["stats"]); agg[0] += 1; agg[1] += c; agg[2] += m; agg[3] += b
    tok[names.get(lang, lang)] = agg
print(f"tree: {sys.argv[5]}")
print(f"{'language':<18}{'files t/c':>16}{'code tokei':>12}{'code codex':>12}{'comm tokei':>12}{'comm codex':>12}{'blank tokei':>12}{'blank codex':>12}  equal")
alleq = True
for lang, s in sorted(cx["languages"].items()):
    t = tok.get(lang, [0, 0, 0, 0])
    c = [s["files"], s["code"], s["comments"], s["blanks"]]
    eq = t == c; alleq &= eq
    print(f"{lang:<18}{str(t[0])+'/'+str(c[0]):>16}{t[1]:>12}{c[1]:>12}{t[2]:>12}{c[2]:>12}{t[3]:>12}{c[3]:>12}  {'yes' if eq else 'NO'}")
others = sorted(set(tok) - set(cx["languages"]))
print(f"tokei-only languages (not counted by codex): {', '.join(others) or 'none'}")
print(f"all shared languages equal: {alleq}")
print(f"time (best of 3, wall): tokei {float(sys.argv[3]):.3f}s, codex repo-map {float(sys.argv[4]):.3f}s, ratio codex/tokei {float(sys.argv[4])/float(sys.argv[3]):.2f}")
PY
