#!/usr/bin/env python3
"""Checks the deployments against infra/deploy/wiring.yaml, without Docker or a cluster.

  docker-compose.yml        each service: binary, settings, ports, depends_on (healthy), healthcheck;
                            each store: healthcheck, data volume; the `demo` service
  helm/shop                 `helm template` with the default values, each examples/*.yaml, and
                            relay overrides: binary, settings (ConfigMap + env), ports, probes,
                            Services, peer addresses; services.<name>.relay.enabled reaching the pod
  infra/local/services.sh   every service and its gRPC port; the wiring's `native` settings
  sources                   default ports (services/*/src/lib.rs, services/shopctl/src/health.rs),
                            binary names (services/*/Cargo.toml, infra/docker/Dockerfile)

Usage: check-wiring.py [--helm PATH] [--kube-version 1.31.0]
Needs PyYAML (infra/deploy/check.sh runs this in its venv) and, for the chart, helm.
Exit status 1 with one FAIL line per problem.
"""

import argparse
import re
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "shop"


class Report:
    def __init__(self):
        self.failures = 0

    def section(self, title):
        print(f"== {title}")

    def result(self, what, problems, detail=""):
        """One `ok` line for `what`, or one FAIL line per problem."""
        if problems:
            self.failures += len(problems)
            for p in problems:
                print(f"  FAIL {what}: {p}")
        else:
            print(f"  ok   {what}{': ' + detail if detail else ''}")


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def split_address(value):
    """(scheme, host, port, path) of a URL or host:port (the first of a comma-separated list)."""
    first = str(value).split(",")[0].strip()
    if "://" in first:
        u = urllib.parse.urlsplit(first)
        return u.scheme, u.hostname, u.port, u.path
    host, _, port = first.rpartition(":")
    return "", host or first, int(port) if port.isdigit() else None, ""


# ------------------------------------------------------------------ the wiring


class Wiring:
    def __init__(self, doc):
        self.doc = doc
        self.stores = doc["stores"]
        self.services = doc["services"]
        self.native = (doc.get("native") or {}).get("env") or {}
        self.shopctl = doc["shopctl"]
        self.jobs = doc.get("jobs") or {}

    def problems(self):
        out = []
        for name, svc in self.services.items():
            for key in ("binary", "grpc", "metrics", "stores"):
                if key not in svc:
                    out.append(f"services.{name} has no {key}")
            for st in svc.get("stores", []):
                if st not in self.stores:
                    out.append(f"services.{name} uses store {st!r}, not in stores")
            for peer in svc.get("calls", []):
                if peer not in self.services:
                    out.append(f"services.{name} calls {peer!r}, not in services")
            if "postgres" in svc.get("stores", []) and not svc.get("database"):
                out.append(f"services.{name} uses postgres but names no database")
        ports = [p for s in self.services.values() for p in (s.get("grpc"), s.get("metrics"))]
        dup = {p for p in ports if ports.count(p) > 1}
        if dup:
            out.append(f"ports used twice: {sorted(dup)}")
        return out

    def required_env(self, name):
        """NAME -> (kind, what): ("exact", value) | ("address", store) | ("peer", service)."""
        svc = self.services[name]
        req = {}
        for key, value in self.doc["env"].items():
            req[key] = ("exact", str(value).format(grpc=svc["grpc"], metrics=svc["metrics"]))
        for st in svc["stores"]:
            for key, value in self.stores[st]["env"].items():
                req[key] = ("address", st) if value == "address" else ("exact", str(value))
        for peer in svc.get("calls", []):
            req[f"SHOP__{peer.upper()}_URL"] = ("peer", peer)
        return req

    def relay_services(self):
        return [n for n, s in self.services.items() if "postgres" in s["stores"]]


# ------------------------------------------------------------------ compose


def compose_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def compose_ports(svc):
    """{(published, target)} of a compose service."""
    out = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.add((int(p.get("published", 0) or 0), int(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            out.add((int(parts[-2]) if len(parts) > 1 else 0, int(parts[-1])))
    return out


def compose_volume_targets(svc):
    out = {}
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out[v["target"]] = v.get("source")
        else:
            parts = str(v).split(":")
            if len(parts) >= 2:
                out[parts[1]] = parts[0]
            else:
                out[parts[0]] = None
    return out


def as_list(cmd):
    if cmd is None:
        return []
    return cmd if isinstance(cmd, list) else str(cmd).split()


def check_compose_address(w, key, value, kind, what, database=None):
    scheme, host, port, path = split_address(value)
    if kind == "address":
        c = w.stores[what]["compose"]
        if (host, port) != (c["service"], c["port"]):
            return f"{key}={value}: must reach {what} at {c['service']}:{c['port']}"
        if database and path.strip("/") != database:
            return f"{key}={value}: database must be {database}"
    elif kind == "peer":
        want = w.services[what]["grpc"]
        if (scheme, host, port) != ("http", what, want):
            return f"{key}={value}: must be http://{what}:{want}"
    return None


def check_compose(w, rep):
    path = REPO / "docker-compose.yml"
    rep.section(f"compose ({path.relative_to(REPO)})")
    doc = load_yaml(path)
    services = doc.get("services") or {}
    volumes = doc.get("volumes") or {}

    used_stores = sorted({st for s in w.services.values() for st in s["stores"]})
    for st in used_stores:
        c = w.stores[st]["compose"]
        svc = services.get(c["service"])
        if svc is None:
            rep.result(f"store {st}", [f"no compose service {c['service']!r}"])
            continue
        problems = []
        hc = svc.get("healthcheck") or {}
        if not hc.get("test") or as_list(hc.get("test"))[:1] == ["NONE"] or hc.get("disable"):
            problems.append("no healthcheck (services wait for it to be healthy)")
        targets = compose_volume_targets(svc)
        if c["data"] not in targets:
            problems.append(f"no volume on its data directory {c['data']}")
        elif targets[c["data"]] and not targets[c["data"]].startswith((".", "/")) \
                and targets[c["data"]] not in volumes:
            problems.append(f"volume {targets[c['data']]!r} is not declared under volumes:")
        rep.result(f"store {st}", problems,
                   f"service {c['service']}, healthcheck, volume on {c['data']}")

    for name, spec in w.services.items():
        svc = services.get(name)
        if svc is None:
            rep.result(name, [f"no compose service {name!r}"])
            continue
        problems = []
        cmd = as_list(svc.get("entrypoint")) or as_list(svc.get("command"))
        if not cmd or Path(cmd[0]).name != spec["binary"]:
            problems.append(f"runs {cmd[:1]}, not {spec['binary']}")
        build = svc.get("build") or {}
        dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
        if dockerfile != "infra/docker/Dockerfile":
            problems.append("is not built from infra/docker/Dockerfile")
        env = compose_env(svc)
        req = w.required_env(name)
        for key, (kind, what) in req.items():
            if env.get(key) in (None, ""):
                problems.append(f"lacks {key} ({'address of ' + what if kind != 'exact' else what})")
                continue
            if kind == "exact" and env[key] != what:
                problems.append(f"{key}={env[key]}, must be {what}")
            elif kind in ("address", "peer"):
                db = spec.get("database") if what == "postgres" else None
                p = check_compose_address(w, key, env[key], kind, what, db)
                if p:
                    problems.append(p)
        ports = compose_ports(svc)
        for label in ("grpc", "metrics"):
            if (spec[label], spec[label]) not in ports:
                problems.append(f"does not publish its {label} port {spec[label]}:{spec[label]}")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append("depends_on is a list: use `name: {condition: service_healthy}`")
            deps = {}
        needed = [w.stores[st]["compose"]["service"] for st in spec["stores"]]
        needed += spec.get("calls", [])
        for dep in needed:
            cond = (deps.get(dep) or {}).get("condition")
            if cond != "service_healthy":
                problems.append(f"does not wait for {dep} (depends_on condition service_healthy)")
        test = " ".join(map(str, as_list((svc.get("healthcheck") or {}).get("test"))))
        if f"127.0.0.1:{spec['grpc']}" not in test:
            problems.append(f"healthcheck does not probe 127.0.0.1:{spec['grpc']}: {test!r}")
        rep.result(name, problems,
                   f"{spec['binary']}, ports {spec['grpc']}/{spec['metrics']}, {len(req)} settings,"
                   f" waits for {', '.join(needed)}")

    demo = services.get("demo")
    if demo is None:
        rep.result("demo", ["no compose service 'demo' (shopctl on the compose network)"])
        return
    problems = []
    if "demo" not in (demo.get("profiles") or []):
        problems.append("is not under the profile `demo`")
    cmd = as_list(demo.get("entrypoint")) + as_list(demo.get("command"))
    if not cmd or "shopctl" not in Path(cmd[0]).name:
        problems.append(f"does not run shopctl: {cmd}")
    deps = demo.get("depends_on") or {}
    deps = {} if isinstance(deps, list) else deps
    for name in w.services:
        if (deps.get(name) or {}).get("condition") != "service_healthy":
            problems.append(f"does not wait for {name} to be healthy")
    env = compose_env(demo)
    for key, target in w.shopctl["env"].items():
        if not env.get(key):
            problems.append(f"lacks {key} (address of {target})")
        elif target in w.stores:
            p = check_compose_address(w, key, env[key], "address", target)
            if p:
                problems.append(p)
        else:
            p = check_compose_address(w, key, env[key], "peer", target)
            if p:
                problems.append(p)
    rep.result("demo", problems, "profile demo, waits for all 7 services,"
               f" sets {', '.join(w.shopctl['env'])}")


# ------------------------------------------------------------------ helm


def helm_render(helm, kube_version, args):
    cmd = [helm, "template", "shop", str(CHART), "--kube-version", kube_version, *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def component(doc):
    return ((doc.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component")


def pod_env(container, configmaps):
    """NAME -> value, or "<from secret>"-like marker for valueFrom, envFrom ConfigMaps first."""
    env = {}
    for src in container.get("envFrom") or []:
        ref = (src.get("configMapRef") or {}).get("name")
        if ref:
            env.update({k: str(v) for k, v in (configmaps.get(ref) or {}).items()})
    for e in container.get("env") or []:
        if "valueFrom" in e:
            env[e["name"]] = "<valueFrom>"
        else:
            env[e["name"]] = str(e.get("value", ""))
    return env


def check_render(w, rep, label, docs, disabled=(), exact_databases=False):
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    deployments = {component(d): d for d in docs if d["kind"] == "Deployment"}
    services = {component(d): d for d in docs if d["kind"] == "Service"}
    problems = []
    for name, spec in w.services.items():
        if name in disabled:
            continue
        dep = deployments.get(name)
        if dep is None:
            problems.append(f"{name}: no Deployment")
            continue
        containers = dep["spec"]["template"]["spec"]["containers"]
        c = next((c for c in containers if c["name"] == name), containers[0])
        cmd = c.get("command") or []
        if not cmd or Path(cmd[0]).name != spec["binary"]:
            problems.append(f"{name}: container command {cmd} does not run {spec['binary']}")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for port_label in ("grpc", "metrics"):
            if ports.get(port_label) != spec[port_label]:
                problems.append(f"{name}: containerPort {port_label}={ports.get(port_label)},"
                                f" must be {spec[port_label]}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            got = ((c.get(probe) or {}).get("grpc") or {}).get("port")
            if got != spec["grpc"]:
                problems.append(f"{name}: {probe} grpc port {got}, must be {spec['grpc']}")
        env = pod_env(c, configmaps)
        for key, (kind, what) in w.required_env(name).items():
            value = env.get(key)
            if value in (None, ""):
                problems.append(f"{name}: lacks {key}"
                                f" ({'address of ' + what if kind != 'exact' else what})")
            elif kind == "exact" and value != what:
                problems.append(f"{name}: {key}={value}, must be {what}")
            elif kind == "address" and what == "postgres" and exact_databases \
                    and value != "<valueFrom>":
                db = split_address(value)[3].strip("/")
                if db != spec["database"]:
                    problems.append(f"{name}: {key}={value}: database must be {spec['database']}")
            elif kind == "peer":
                peer_svc = services.get(what)
                want_host = peer_svc["metadata"]["name"] if peer_svc else f"<Service of {what}>"
                scheme, host, port, _ = split_address(value)
                if (scheme, host, port) != ("http", want_host, w.services[what]["grpc"]):
                    problems.append(f"{name}: {key}={value}, must be"
                                    f" http://{want_host}:{w.services[what]['grpc']}")
        svc = services.get(name)
        if svc is None:
            problems.append(f"{name}: no Service")
        else:
            sports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
            for port_label in ("grpc", "metrics"):
                if sports.get(port_label) != spec[port_label]:
                    problems.append(f"{name}: Service port {port_label}={sports.get(port_label)},"
                                    f" must be {spec[port_label]}")
    for name, job in w.jobs.items():
        dep = deployments.get(name)
        if dep is None:
            problems.append(f"{name}: no Deployment (jobs.{name})")
            continue
        c = dep["spec"]["template"]["spec"]["containers"][0]
        cmd = c.get("command") or []
        if not cmd or Path(cmd[0]).name != job["binary"] or cmd[1:2] != job["command"][:1]:
            problems.append(f"{name}: container command {cmd} does not run {job['binary']} {job['command'][0]}")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        if ports.get("metrics") != job["metrics"]:
            problems.append(f"{name}: containerPort metrics={ports.get('metrics')}, must be {job['metrics']}")
        env = pod_env(c, configmaps)
        for key in job["env"]:
            if key not in env:
                problems.append(f"{name}: {key} not set")
    extra = set(deployments) - set(w.services) - set(w.jobs)
    if extra:
        problems.append(f"Deployments not in the wiring: {sorted(extra)}")
    n = len(w.services) - len(disabled)
    rep.result(label, problems, f"{n} Deployments and Services: binary, ports, probes, settings")
    return deployments


def relay_enabled(deployments, name):
    c = deployments[name]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in c.get("env") or []}.get("SHOP__RELAY__ENABLED")


def check_helm(w, rep, helm, kube_version):
    rep.section(f"helm ({CHART.relative_to(REPO)}, helm template --kube-version {kube_version})")
    values_files = [None] + sorted((CHART / "examples").glob("*.yaml"))
    for vf in values_files:
        label = "default values" if vf is None else f"-f {vf.relative_to(REPO)}"
        disabled = ()
        if vf is not None:
            services = (load_yaml(vf) or {}).get("services") or {}
            disabled = tuple(n for n, s in services.items() if (s or {}).get("enabled") is False)
        try:
            docs = helm_render(helm, kube_version, [] if vf is None else ["-f", str(vf)])
        except RuntimeError as e:
            rep.result(label, [str(e)])
            continue
        check_render(w, rep, label, docs, disabled, exact_databases=vf is None)

    # services.<name>.relay.enabled: false must reach the pod (Sprig's merge used to drop it),
    # and a service's true must win over a global false; the other services keep theirs.
    relay = w.relay_services()
    first, second = relay[0], relay[1]
    cases = [
        (f"--set services.{first}.relay.enabled=false",
         [f"services.{first}.relay.enabled=false"],
         {n: ("false" if n == first else "true") for n in relay}),
        (f"--set relay.enabled=false,services.{second}.relay.enabled=true",
         ["relay.enabled=false", f"services.{second}.relay.enabled=true"],
         {n: ("true" if n == second else "false") for n in relay}),
    ]
    for label, sets, want in cases:
        args = [a for s in sets for a in ("--set", s)]
        try:
            deployments = {component(d): d for d in helm_render(helm, kube_version, args)
                           if d["kind"] == "Deployment"}
        except RuntimeError as e:
            rep.result(label, [str(e)])
            continue
        got = {n: relay_enabled(deployments, n) for n in relay}
        problems = [f"{n}: SHOP__RELAY__ENABLED={got[n]!r}, must be {want[n]!r}"
                    for n in relay if got[n] != want[n]]
        rep.result(label, problems,
                   "SHOP__RELAY__ENABLED " + ", ".join(f"{n}={got[n]}" for n in relay))


# ------------------------------------------------------------------ native stack and sources


def check_native(w, rep):
    path = REPO / "infra" / "local" / "services.sh"
    rep.section(f"native stack ({path.relative_to(REPO)})")
    text = path.read_text()
    m = re.search(r"^SERVICES=\(([^)]*)\)", text, re.M)
    problems = []
    if not m:
        problems.append("no SERVICES=(name:port ...) array found")
    else:
        listed = dict(tok.split(":", 1) for tok in m.group(1).split())
        for name, spec in w.services.items():
            if name not in listed:
                problems.append(f"does not start {name}")
            elif listed[name] != str(spec["grpc"]):
                problems.append(f"{name} on port {listed[name]}, must be {spec['grpc']}")
        for name in set(listed) - set(w.services):
            problems.append(f"starts {name}, which is not in the wiring")
        if "shop-$name" not in text:
            problems.append("does not run the binaries as shop-$name")
        for name, spec in w.services.items():
            if spec["binary"] != f"shop-{name}":
                problems.append(f"runs shop-{name}, but {name}'s binary is {spec['binary']}")
    for key, rule in w.native.items():
        value = str(rule["value"])
        exported = re.search(rf"(^|[\s;]){re.escape(key)}=[\"']?(\$\{{{re.escape(key)}:-)?"
                             rf"{re.escape(value)}\b", text, re.M)
        default = rule.get("default")
        by_default = default and default["contains"] in (REPO / default["file"]).read_text()
        if not exported and not by_default:
            where = f" nor is it the default in {default['file']}" if default else ""
            problems.append(f"does not set {key}={value}{where}")
    rep.result("services.sh", problems,
               f"{len(w.services)} services on their gRPC ports"
               + (f"; {', '.join(w.native)} set or default" if w.native else ""))


def check_sources(w, rep):
    rep.section("sources (the binaries' defaults, names)")
    for name, spec in w.services.items():
        lib = REPO / "services" / name / "src" / "lib.rs"
        text = lib.read_text() if lib.exists() else ""
        found = re.findall(rf'PgServiceSettings::local\(\s*"{name}",\s*(\d+),\s*(\d+)\s*\)', text) \
            or re.findall(r"ServerSettings::on_ports\(\s*(\d+),\s*(\d+)\s*\)", text)
        want = (str(spec["grpc"]), str(spec["metrics"]))
        problems = []
        if len(set(found)) != 1:
            problems.append(f"{lib.relative_to(REPO)}: cannot find one default port pair"
                            f" (PgServiceSettings::local / ServerSettings::on_ports): {found}")
        elif found[0] != want:
            problems.append(f"default ports {'/'.join(found[0])}, must be {'/'.join(want)}")
        rep.result(f"{name} defaults", problems, f"{want[0]}/{want[1]} in {lib.relative_to(REPO)}")

    health = REPO / "services" / "shopctl" / "src" / "health.rs"
    m = re.search(r"SERVICES[^=]*=\s*&\[(.*?)\];", health.read_text(), re.S)
    listed = dict(re.findall(r'\("(\w+)",\s*(\d+)\)', m.group(1))) if m else {}
    want = {n: str(s["grpc"]) for n, s in w.services.items()}
    rep.result("shopctl ports", [] if listed == want else
               [f"{health.relative_to(REPO)} SERVICES {listed}, must be {want}"],
               f"{health.relative_to(REPO)} dials the same gRPC ports")

    packages = {}
    for manifest in sorted((REPO / "services").glob("*/Cargo.toml")):
        doc = tomllib.loads(manifest.read_text())
        bins = [b["name"] for b in doc.get("bin", [])] or [doc["package"]["name"]]
        for b in bins:
            packages[b] = manifest.relative_to(REPO)
    dockerfile = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    binaries = [s["binary"] for s in w.services.values()] + [w.shopctl["binary"]]
    problems = []
    for b in binaries:
        if b not in packages:
            problems.append(f"no services/*/Cargo.toml builds a binary {b!r}")
        if not re.search(rf"(?<![\w-]){re.escape(b)}(?![\w-])", dockerfile):
            problems.append(f"infra/docker/Dockerfile does not copy {b}")
    rep.result("binaries", problems, f"{' '.join(binaries)} in Cargo.toml and the Dockerfile")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--helm", default="helm", help="helm binary (default: helm on PATH)")
    ap.add_argument("--kube-version", default="1.31.0")
    ap.add_argument("--wiring", default=str(REPO / "infra" / "deploy" / "wiring.yaml"))
    args = ap.parse_args()

    rep = Report()
    w = Wiring(load_yaml(args.wiring))
    rep.section(f"wiring ({Path(args.wiring).relative_to(REPO)})")
    rep.result("wiring.yaml", w.problems(),
               f"{len(w.services)} services, {len(w.stores)} stores")
    if rep.failures:
        return 1
    check_compose(w, rep)
    check_helm(w, rep, args.helm, args.kube_version)
    check_native(w, rep)
    check_sources(w, rep)
    if rep.failures:
        print(f"check-wiring: {rep.failures} problem(s) (see FAIL above); the wiring is"
              f" {Path(args.wiring).relative_to(REPO)}")
        return 1
    print("check-wiring: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
