#!/usr/bin/env bash
# Static checks of docker/compose.yml and docker/Dockerfile (ctest: docker, label unit).
# No Docker engine is needed: the files are parsed, not run. Prints one line per check and
# "docker: N passed, M failed"; exits non-zero when any check fails.
#
#   bash tests/docker/check_docker.sh [CHECKOUT]      (default: this script's checkout)
set -euo pipefail

ROOT=${1:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)}

# PyYAML: python3-yaml (scripts/install-deps.sh). The python3 on PATH may be another
# interpreter without it (pyenv, a venv): fall back to Debian's.
PY=""
for cand in python3 /usr/bin/python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import yaml' 2>/dev/null; then
        PY=$cand
        break
    fi
done
if [ -z "$PY" ]; then
    echo "docker: FAIL no python3 with the yaml module (install python3-yaml: scripts/install-deps.sh)"
    echo "docker: 0 passed, 1 failed"
    exit 1
fi

exec "$PY" - "$ROOT" <<'PY'
import fnmatch
import ipaddress
import os
import re
import shlex
import sys
import urllib.parse

import yaml

root = sys.argv[1]
compose_path = os.path.join(root, "docker", "compose.yml")
dockerfile_path = os.path.join(root, "docker", "Dockerfile")
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"docker: ok   {name}")
    else:
        failed += 1
        print(f"docker: FAIL {name}{': ' + detail if detail else ''}")
    return ok


def finish():
    print(f"docker: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def interpolate(s):
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR}, with an empty environment."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}",
                  lambda m: m.group(1) or "", str(s))


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: interpolate(v) for k, v in env.items()}


def healthcheck_test(svc):
    hc = svc.get("healthcheck")
    if not isinstance(hc, dict) or hc.get("disable"):
        return None
    test = hc.get("test")
    if isinstance(test, list):
        if not test or test[0] == "NONE":
            return None
        return " ".join(str(t) for t in test)
    return str(test) if test else None


def ip_literal(host):
    try:
        ipaddress.ip_address(host)
        return True
    except (ValueError, TypeError):
        return False


# ---- compose.yml --------------------------------------------------------------------------
try:
    with open(compose_path, encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    ok = isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    check("compose.yml parses as YAML with a services mapping", ok,
          "" if ok else "no services mapping")
except (OSError, yaml.YAMLError) as e:
    check("compose.yml parses as YAML with a services mapping", False, str(e).splitlines()[0])
    compose = None
if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
    finish()
services = compose["services"]

want = ["postgres", "redis", "braintree", "limits"]
missing = [s for s in want if not isinstance(services.get(s), dict)]
check("services postgres, redis, braintree and limits", not missing,
      "missing " + ", ".join(missing))
if missing:
    finish()
lim = services["limits"]


def published(svc):
    """(host_ip, published, target) of each published port, short or long syntax."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "")), str(p.get("published", "")),
                        str(p.get("target", ""))))
            continue
        s = str(p).split("/")[0]
        m = re.fullmatch(r"(?:(\[[^\]]*\]|\d+\.\d+\.\d+\.\d+):)?(?:([0-9-]*):)?([0-9-]+)", s)
        if m:
            out.append(((m.group(1) or "").strip("[]"), m.group(2) or "", m.group(3)))
        else:
            out.append(("?", s, "?"))
    return out


ports = published(lim)
check("limits publishes 127.0.0.1:5000 -> 5000",
      ("127.0.0.1", "5000", "5000") in ports, f"ports {ports}")
exposed = [(n, p) for n, s in services.items() for p in published(s) if p[0] != "127.0.0.1"]
check("no service publishes a port beyond the host's loopback", not exposed, f"{exposed}")

no_hc = [n for n, s in services.items()
         if (s.get("ports") or s.get("expose")) and healthcheck_test(s) is None]
listening = [n for n, s in services.items() if s.get("ports") or s.get("expose")]
check("every service with a port (ports/expose) has a healthcheck",
      not no_hc and set(want) <= set(listening),
      f"without healthcheck: {no_hc}; without ports/expose: {sorted(set(want) - set(listening))}")

lim_hc = healthcheck_test(lim) or ""
check("the limits healthcheck hits /readyz on port 5000",
      re.search(r"(127\.0\.0\.1|localhost):5000/readyz\b", lim_hc) is not None, lim_hc)

deps = lim.get("depends_on") or {}
bad = [d for d in ("postgres", "redis", "braintree")
       if not isinstance(deps, dict) or not isinstance(deps.get(d), dict)
       or deps[d].get("condition") != "service_healthy"]
check("limits depends_on postgres, redis, braintree: service_healthy", not bad, f"not: {bad}")

# Fixed addresses on a network with a defined subnet.
subnets = []
for net in (compose.get("networks") or {}).values():
    for c in ((net or {}).get("ipam") or {}).get("config") or []:
        try:
            subnets.append(ipaddress.ip_network(c["subnet"]))
        except (KeyError, ValueError, TypeError):
            pass
ips = {}
for n, s in services.items():
    nets = s.get("networks")
    if isinstance(nets, dict):
        for cfg in nets.values():
            if isinstance(cfg, dict) and cfg.get("ipv4_address"):
                ips[n] = str(cfg["ipv4_address"])
outside = {n: ip for n, ip in ips.items()
           if not any(ip_literal(ip) and ipaddress.ip_address(ip) in sn for sn in subnets)}
check("postgres, redis, braintree, limits have fixed IPs inside an ipam subnet",
      subnets and set(want) <= set(ips) and not outside
      and len(set(ips.values())) == len(ips),
      f"subnets {[str(s) for s in subnets]}, ips {ips}, outside {outside}")

env = env_of(lim)


def url_target(name, service, port):
    u = urllib.parse.urlsplit(env.get(name, ""))
    host = u.hostname
    try:
        uport = u.port
    except ValueError:
        uport = None
    ok = ip_literal(host) and host == ips.get(service) and uport == port
    check(f"{name} uses the IP literal of {service} ({ips.get(service)}:{port})", ok,
          f"{name}={env.get(name, '(unset)')}")


url_target("DATABASE_URL", "postgres", 5432)
url_target("REDIS_URL", "redis", 6379)

bt_cmd = services["braintree"].get("command") or []
bt_argv = shlex.split(bt_cmd) if isinstance(bt_cmd, str) else [str(a) for a in bt_cmd]
bt_port = None
if "--listen" in bt_argv[:-1]:
    bt_port = int(bt_argv[bt_argv.index("--listen") + 1].rsplit(":", 1)[1])
check("braintree runs limits-fake-braintree --listen 0.0.0.0:PORT",
      bool(bt_argv) and bt_argv[0].endswith("limits-fake-braintree") and bt_port is not None
      and "0.0.0.0:" in " ".join(bt_argv), f"command {bt_argv}")
url_target("BRAINTREE_ENVIRONMENT", "braintree", bt_port)

lim_cmd = lim.get("command") or []
lim_cmd = lim_cmd if isinstance(lim_cmd, str) else " ".join(str(a) for a in lim_cmd)
steps = [lim_cmd.find(w) for w in ("limits initdb", "limits fake-data", "limits serve")]
check("limits runs initdb, then fake-data, then serve, with LISTEN=0.0.0.0:5000",
      -1 not in steps and steps == sorted(steps) and env.get("LISTEN") == "0.0.0.0:5000",
      f"command {lim_cmd!r}, LISTEN={env.get('LISTEN')}")

# ---- Dockerfile ---------------------------------------------------------------------------
try:
    with open(dockerfile_path, encoding="utf-8") as f:
        text = f.read()
except OSError as e:
    check("docker/Dockerfile is readable", False, str(e))
    finish()

# Instructions: continuation lines joined, comments dropped.
instrs = []
for line in re.sub(r"\\\n", " ", text).splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
        word, _, rest = line.partition(" ")
        instrs.append((word.upper(), rest.strip()))
stages = []
for word, rest in instrs:
    if word == "FROM":
        stages.append({"from": rest, "instrs": []})
    elif stages:
        stages[-1]["instrs"].append((word, rest))
check("Dockerfile: a debian:12 build stage and a debian:12-slim runtime stage",
      len(stages) >= 2 and re.match(r"debian:(12|bookworm)\s", stages[0]["from"] + " ")
      and re.match(r"debian:(12|bookworm)-slim\b", stages[-1]["from"]),
      f"stages {[s['from'] for s in stages]}")
build, runtime = (stages[0], stages[-1]) if len(stages) >= 2 else ({"instrs": []}, {"instrs": []})

script = os.path.join(root, "scripts", "install-deps.sh")
copied = [r for w, r in build["instrs"] if w == "COPY" and "scripts/install-deps.sh" in r]
runs = [r for w, r in build["instrs"] if w == "RUN"]
check("build stage copies and runs scripts/install-deps.sh (the script CI runs)",
      os.path.isfile(script) and copied
      and any(re.search(r"\bscripts/install-deps\.sh\b", r) for r in runs), f"RUN {runs}")
check("build stage builds with CMake, Release, -DLIM_TESTS=OFF",
      any("CMAKE_BUILD_TYPE=Release" in r and "LIM_TESTS=OFF" in r for r in runs)
      and any("cmake --build" in r for r in runs))

srcs = []
for w, r in build["instrs"]:
    if w == "COPY" and "--from" not in r:
        srcs += [a for a in shlex.split(r)[:-1] if not a.startswith("--")]
gone = [s for s in srcs if not os.path.exists(os.path.join(root, s))]
check("every COPY source of the build stage exists in the checkout", srcs and not gone,
      f"missing {gone}")

# What the top-level CMakeLists.txt reads (its includes, subdirectories, sources and embedded
# files; tests/ is off in the image) must be copied and not kept out by the .dockerignore.
ignore_path = os.path.join(root, "docker", "Dockerfile.dockerignore")
if not os.path.isfile(ignore_path):
    ignore_path = os.path.join(root, ".dockerignore")
patterns = []
if os.path.isfile(ignore_path):
    with open(ignore_path, encoding="utf-8") as f:
        patterns = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]


def ignored(path):
    parts = path.split("/")
    hit = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            hit = not neg
    return hit


with open(os.path.join(root, "CMakeLists.txt"), encoding="utf-8") as f:
    cm = f.read()
needed = set(re.findall(r"\$\{CMAKE_SOURCE_DIR\}/([\w.+/-]+)", cm))
needed |= set(re.findall(r"\binclude\((cmake/[\w.+/-]+)\)", cm))
needed |= {d for d in re.findall(r"\badd_subdirectory\(([\w.+/-]+)\)", cm) if d != "tests"}
needed |= set(re.findall(r"(?<![\w/}])((?:src|include)/[\w.+/-]+)", cm))
needed.add("CMakeLists.txt")
not_copied = sorted(p for p in needed
                    if not any(s in (".", "./") or p == s.rstrip("/")
                               or p.startswith(s.rstrip("/") + "/") for s in srcs))
kept_out = sorted(p for p in needed if ignored(p))
check(f"the {len(needed)} paths CMakeLists.txt reads are copied and not .dockerignored",
      not not_copied and not kept_out,
      f"not copied {not_copied[:6]}{' ...' if len(not_copied) > 6 else ''}, "
      f"ignored {kept_out[:6]}{' ...' if len(kept_out) > 6 else ''}")

users = [r.split()[0] for w, r in runtime["instrs"] if w == "USER" and r]
last_user = users[-1] if users else ""
check("runtime stage runs as a USER that is not root",
      last_user and last_user.split(":")[0] not in ("root", "0"), f"USER {last_user or '(none)'}")

rt_text = " ".join(r for _, r in runtime["instrs"])
check("runtime stage copies limits and limits-fake-braintree from the build stage",
      any(w == "COPY" and "--from=build" in r and "/limits " in r + " "
          and "limits-fake-braintree" in r for w, r in runtime["instrs"]))
check("runtime stage: EXPOSE 5000 and a HEALTHCHECK on /readyz",
      any(w == "EXPOSE" and "5000" in r.split() for w, r in runtime["instrs"])
      and any(w == "HEALTHCHECK" and "/readyz" in r for w, r in runtime["instrs"]))
libs = ["libuv1", "libcjson1", "libcmark0.30.2", "libhiredis0.14", "libpq5", "libcurl4",
        "libexpat1", "zlib1g", "libssl3", "ca-certificates"]
absent = [p for p in libs if not re.search(r"(?<![\w.+-])" + re.escape(p) + r"(?![\w.+-])",
                                           rt_text)]
dev = re.findall(r"\b[\w.+-]+-dev\b", rt_text)
check("runtime stage installs the runtime libraries and no -dev package",
      not absent and not dev, f"missing {absent}, dev {dev}")

finish()
PY
