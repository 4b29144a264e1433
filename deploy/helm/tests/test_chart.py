"""The Heddle Helm chart, rendered by Helm's own engine (helm-python-sdk bundles Helm v4's Go
library), checked object by object.

Run by deploy/helm/tests/run.sh (deploy/test.sh calls it after `cargo build --workspace
--bins`). Environment:
  HEDDLE_BIN_DIR      where heddle-switch and heddle-manager are (default: <repo>/target/debug)
  HEDDLE_K8S_VERSION  Kubernetes version the objects are validated against (default 1.37.0)
"""

import base64
import copy
import json
import os
import pathlib
import re
import subprocess
import tempfile

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

REPO = pathlib.Path(__file__).resolve().parents[3]
CHART = REPO / "deploy/helm/heddle"
EXAMPLES = CHART / "examples"
SCHEMAS = pathlib.Path(__file__).resolve().parent / "schemas"
BIN_DIR = pathlib.Path(os.environ.get("HEDDLE_BIN_DIR", REPO / "target/debug"))
K8S_VERSION = os.environ.get("HEDDLE_K8S_VERSION", "1.37.0")
RELEASE, NAMESPACE = "heddle", "heddle-system"

VALUE_FILES = sorted(p.name for p in EXAMPLES.glob("values-*.yaml"))
VALUE_SETS = ["defaults"] + VALUE_FILES


# ---------------------------------------------------------------- helpers


def values_of(name):
    """The values of one set: the chart's defaults, or an example file."""
    if name == "defaults":
        return {}
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.fixture(scope="session")
def chart():
    with helm_python.Chart.load(str(CHART)) as c:
        yield c


_RENDERED = {}


def render(chart, values):
    """Rendered templates (path -> text), as `helm template` would write them. Each values set
    is rendered once per session (the generated webhook certificate makes a render slow)."""
    key = json.dumps(values, sort_keys=True)
    if key not in _RENDERED:
        _RENDERED[key] = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    return dict(_RENDERED[key])


def objects_of(rendered):
    """Every Kubernetes object the templates produced (NOTES.txt is not one)."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                out.append(doc)
    return out


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"exactly one {kind} {name} is rendered (found {len(found)})"
    return found[0]


def node_groups(values):
    return values.get("nodeGroups") or [{"name": "default"}]


def group_objects(objects, group):
    """The ConfigMap and DaemonSet of one node group."""
    name = f"{RELEASE}-node-{group}"
    return one(objects, "ConfigMap", name), one(objects, "DaemonSet", name)


def container(pod_spec, name):
    found = [c for c in pod_spec["containers"] + pod_spec.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"the pod has one container named {name}"
    return found[0]


def binary(name):
    path = BIN_DIR / name
    assert path.is_file(), f"{path} exists (build it: cargo build --workspace --bins, or set HEDDLE_BIN_DIR)"
    return str(path)


def third_party_validator(kind, api_version):
    """Schemas for the optional cert-manager and Prometheus Operator objects, which have no
    Kubernetes OpenAPI schema: deploy/helm/tests/schemas/<kind>-<group>-<version>.json."""
    group, version = api_version.split("/")
    path = SCHEMAS / f"{kind.lower()}-{group}-{version}.json"
    assert path.is_file(), f"a schema for {api_version} {kind} exists at {path}"
    meta = json.loads((SCHEMAS / "meta.json").read_text())
    registry = referencing.Registry().with_resource("meta.json", referencing.Resource.from_contents(meta))
    return jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=registry)


THIRD_PARTY = {("cert-manager.io/v1", "Certificate"), ("cert-manager.io/v1", "Issuer"),
               ("monitoring.coreos.com/v1", "ServiceMonitor")}


def crd_validators():
    """(apiVersion, kind) -> a validator for the chart's own CRDs' openAPIV3Schema."""
    out = {}
    for crd in yaml.safe_load_all((CHART / "crds/heddle.dev.yaml").read_text()):
        if not crd:
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = openapi_to_jsonschema(v["schema"]["openAPIV3Schema"])
            out[(f"{group}/{v['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return out


def openapi_to_jsonschema(node):
    """OpenAPI v3.0 `nullable: true` becomes a JSON Schema null type; x-kubernetes-*
    extensions are dropped (the CEL rules in them only apply to updates)."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def example_heddle_objects(chart):
    """The heddle.dev objects of NOTES.txt (between its markers) and examples/networks.yaml."""
    notes = render(chart, {})[f"{RELEASE}/templates/NOTES.txt"]
    m = re.search(r"# --- example objects ---\n(.*?)# --- end of example objects ---", notes, re.S)
    assert m, "NOTES.txt holds example objects between its markers"
    docs = [("NOTES.txt", d) for d in yaml.safe_load_all(m.group(1)) if d]
    docs += [("examples/networks.yaml", d) for d in yaml.safe_load_all((EXAMPLES / "networks.yaml").read_text()) if d]
    return docs


# ---------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_helm_lint_reports_no_errors_or_warnings(values_set):
    report = helm_python.lint(str(CHART), values_of(values_set), namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}")
    assert report["errors"] == [], f"helm lint of {values_set}: no errors, got {report['errors']}"
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], f"helm lint of {values_set}: no warnings or errors, got {serious}"


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_every_rendered_object_validates_strictly_against_kubernetes_or_its_operators_subset_schema(chart, values_set):
    """Kubernetes kinds: kubernetes-validate --strict. cert-manager Certificate/Issuer and the
    Prometheus Operator ServiceMonitor: schemas/*.json, the fields this chart uses typed as
    those projects' CRDs type them (written here; the upstream CRDs are not vendored)."""
    objects = objects_of(render(chart, values_of(values_set)))
    assert len(objects) >= 15, f"{values_set} renders the whole release ({len(objects)} objects)"
    for obj in objects:
        what = f"{values_set}: {obj['kind']} {obj['metadata'].get('name')}"
        key = (obj["apiVersion"], obj["kind"])
        if key in THIRD_PARTY:
            errors = [e.message for e in third_party_validator(obj["kind"], obj["apiVersion"]).iter_errors(obj)]
            assert errors == [], f"{what} fits its CRD's fields: {errors}"
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{what} is not a valid Kubernetes {K8S_VERSION} object (strict): {e.message} at {list(e.path)}")


def test_the_charts_crds_validate_strictly_against_kubernetes():
    """crds/ is installed by Helm as is (not rendered): each CustomResourceDefinition must be a
    valid apiextensions.k8s.io/v1 object of the same Kubernetes version."""
    crds = [d for d in yaml.safe_load_all((CHART / "crds/heddle.dev.yaml").read_text()) if d]
    kinds = {c["spec"]["names"]["kind"] for c in crds}
    assert {"Network", "ClusterNetwork", "ProviderNetwork", "NetworkAddressBlock"} <= kinds, f"the CRDs: {kinds}"
    for crd in crds:
        try:
            kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"CRD {crd['metadata']['name']} is not a valid Kubernetes {K8S_VERSION} object (strict): "
                        f"{e.message} at {list(e.path)}")


def test_the_kubernetes_validation_refuses_an_unknown_field(chart):
    """Control: the strict validation above can fail."""
    ds = by_kind(objects_of(render(chart, {})), "DaemonSet")[0]
    ds["spec"]["template"]["spec"]["containers"][0]["cpuLimit"] = 2
    with pytest.raises(kubernetes_validate.ValidationError, match="cpuLimit"):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_rendered_switch_config_passes_heddle_switch_check(chart, values_set):
    values = values_of(values_set)
    objects = objects_of(render(chart, values))
    for group in node_groups(values):
        cm, _ = group_objects(objects, group["name"])
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(cm["data"]["switch.yaml"])
            f.flush()
            r = subprocess.run([binary("heddle-switch"), "--check", "--config", f.name], capture_output=True, text=True)
        assert r.returncode == 0, (
            f"{values_set} group {group['name']}: heddle-switch --check accepts the rendered switch.yaml:\n"
            f"{r.stderr}\n--- switch.yaml ---\n{cm['data']['switch.yaml']}")


def device_plugin_check(config_text):
    """`heddle-manager device-plugin --check --config F` on a rendered device-plugin.yaml."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(config_text)
        f.flush()
        return subprocess.run([binary("heddle-manager"), "device-plugin", "--check", "--config", f.name],
                              capture_output=True, text=True)


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_rendered_device_plugin_config_passes_its_check(chart, values_set):
    values = values_of(values_set)
    objects = objects_of(render(chart, values))
    for group in node_groups(values):
        cm, _ = group_objects(objects, group["name"])
        r = device_plugin_check(cm["data"]["device-plugin.yaml"])
        assert r.returncode == 0, (
            f"{values_set} group {group['name']}: heddle-manager device-plugin --check accepts the rendered "
            f"device-plugin.yaml:\n{r.stderr}\n--- device-plugin.yaml ---\n{cm['data']['device-plugin.yaml']}")


def test_values_switch_block_equals_heddle_switch_print_default_config():
    printed = subprocess.run([binary("heddle-switch"), "--print-default-config"], capture_output=True, text=True, check=True)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["switch"] == yaml.safe_load(printed.stdout), (
        "values.yaml `switch:` equals `heddle-switch --print-default-config` (parsed YAML); "
        f"values: {values['switch']}\nprinted: {yaml.safe_load(printed.stdout)}")


# Binaries of the image, by the name the chart's commands call them.
CLAP_BINARIES = {"heddle-switch", "heddle-manager", "heddlectl"}


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_every_command_line_the_chart_writes_is_accepted_by_its_binary(chart, values_set):
    """Each container's command + args, and each exec probe, parsed by the real binary (clap):
    `--help` appended, so a flag the binary does not know fails, a known one exits 0."""
    checked = 0
    for obj in objects_of(render(chart, values_of(values_set))):
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            lines = [c["command"] + c.get("args", [])]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                cmd = c.get(probe, {}).get("exec", {}).get("command")
                if cmd and cmd[:2] == ["/bin/sh", "-c"]:
                    cmd = cmd[2].split("|")[0].split()
                if cmd:
                    lines.append(cmd)
            for line in lines:
                if line[0] not in CLAP_BINARIES:
                    assert line[0] == "/usr/local/share/heddle/install-cni.sh", f"unknown program {line}"
                    continue
                r = subprocess.run([binary(line[0]), *line[1:], "--help"], capture_output=True, text=True)
                assert r.returncode == 0, (
                    f"{values_set}: {obj['metadata']['name']}/{c['name']}: {line} is refused by {line[0]}:\n{r.stderr}")
                checked += 1
    assert checked >= 6, f"{values_set}: command lines checked: {checked}"


def test_the_command_line_check_refuses_an_unknown_flag():
    """Control: a flag heddle-manager does not know fails the check above."""
    r = subprocess.run([binary("heddle-manager"), "run", "--leader-elect=true", "--help"], capture_output=True, text=True)
    assert r.returncode != 0, "heddle-manager accepted an unknown flag"


# ---------------------------------------------------------------- the node pod


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_every_node_pod_is_guaranteed_qos_with_whole_cpus_for_the_switch(chart, values_set):
    values = values_of(values_set)
    objects = objects_of(render(chart, values))
    for group in node_groups(values):
        cm, ds = group_objects(objects, group["name"])
        pod = ds["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            res = c.get("resources", {})
            for r in ("cpu", "memory"):
                assert r in res.get("requests", {}), f"{values_set}/{group['name']}: container {c['name']} requests {r}"
            assert res["requests"] == res["limits"], (
                f"{values_set}/{group['name']}: container {c['name']} has requests == limits (Guaranteed QoS): {res}")
        cpu = container(pod, "switch")["resources"]["limits"]["cpu"]
        assert re.fullmatch(r"[1-9][0-9]*", str(cpu)), f"{values_set}/{group['name']}: the switch asks for whole CPUs ({cpu})"
        pmd = yaml.safe_load(cm["data"]["switch.yaml"])["cores"]["pmd"]
        given = group.get("cpus") or values.get("node", {}).get("cpus")
        need = {int: lambda: pmd + 1, list: lambda: len(pmd) + 1}.get(type(pmd), lambda: None)()
        where = f"{values_set}/{group['name']}"
        if given:
            assert int(cpu) == given, f"{where}: the switch asks for the cpus the values give ({given}), got {cpu}"
            assert need is None or given >= need, f"{where}: cpus {given} covers cores.pmd {pmd} + 1 control CPU"
        else:
            assert need is not None and int(cpu) == need, f"{where}: cpu {cpu} = PMD CPUs of cores.pmd {pmd} + 1 control CPU"


@pytest.mark.parametrize("values_set", VALUE_SETS)
def test_hugepages_come_from_the_kubelet_per_page_size(chart, values_set):
    values = values_of(values_set)
    objects = objects_of(render(chart, values))
    for group in node_groups(values):
        cm, ds = group_objects(objects, group["name"])
        cfg = yaml.safe_load(cm["data"]["switch.yaml"])
        mem = cfg["memory"]
        assert mem["reserve"] is False and mem["huge_dir"] == "/dev/hugepages", (
            f"{values_set}/{group['name']}: the rendered config never reserves pages itself and uses the kubelet's mount")
        size, page_mib = ("1Gi", 1024) if mem["page_size"].upper().startswith("1G") else ("2Mi", 2)
        want = sum(-(-m // page_mib) * page_mib for m in mem["socket_mem_mb"])
        pod = ds["spec"]["template"]["spec"]
        sw = container(pod, "switch")
        for side in ("requests", "limits"):
            assert sw["resources"][side].get(f"hugepages-{size}") == f"{want}Mi", (
                f"{values_set}/{group['name']}: switch {side} hugepages-{size} = {want}Mi (socket_mem_mb rounded up to pages)")
        other = {"2Mi": "1Gi", "1Gi": "2Mi"}[size]
        assert f"hugepages-{other}" not in sw["resources"]["limits"], f"{values_set}/{group['name']}: only one page size is asked for"
        vol = [v for v in pod["volumes"] if v["name"] == "hugepages"]
        assert vol == [{"name": "hugepages", "emptyDir": {"medium": f"HugePages-{size}"}}], (
            f"{values_set}/{group['name']}: /dev/hugepages is an emptyDir of medium HugePages-{size}")
        assert {"name": "hugepages", "mountPath": "/dev/hugepages"} in sw["volumeMounts"], (
            f"{values_set}/{group['name']}: the switch mounts it at /dev/hugepages")


def test_node_pod_has_what_the_common_contract_names(chart):
    objects = objects_of(render(chart, {}))
    _, ds = group_objects(objects, "default")
    pod = ds["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["install-cni"], "one init container, install-cni"
    assert [c["name"] for c in pod["containers"]] == ["switch", "node-agent", "device-plugin"], "switch, node-agent, device-plugin"
    assert pod["priorityClassName"] == "system-node-critical", "the node pod is system-node-critical"
    assert pod["hostNetwork"] is True, "the switch and heddle-cni share the host's network namespace"
    assert pod["tolerations"] == [{"operator": "Exists"}], "the node pod tolerates every taint by default"
    sw = container(pod, "switch")
    assert sw["command"] == ["heddle-switch", "--config", "/etc/heddle/switch.yaml"], "the switch runs on the rendered config"
    assert sw["securityContext"]["privileged"] is False, "no PCI port in the defaults: the switch is not privileged"
    assert sw["securityContext"]["capabilities"]["add"] == ["IPC_LOCK", "NET_ADMIN", "NET_RAW", "SYS_RESOURCE"], \
        "only the capabilities DPDK and kernel ports need"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "heddlectl health" in " ".join(sw[probe]["exec"]["command"]), f"the switch's {probe} asks heddlectl health"
    mounts = {m["mountPath"]: m for m in sw["volumeMounts"]}
    for path in ("/run/heddle", "/var/lib/heddle", "/sys", "/dev/vfio", "/dev/hugepages"):
        assert path in mounts, f"the switch mounts {path}"
    assert mounts["/sys"].get("readOnly") is True, "the switch sees /sys read-only"
    dp = container(pod, "device-plugin")
    assert dp["command"] == ["heddle-manager", "device-plugin", "--config", "/etc/heddle/device-plugin.yaml"], "device plugin command"
    dp_mounts = {m["mountPath"]: m for m in dp["volumeMounts"]}
    for path in ("/var/lib/kubelet/device-plugins", "/run/heddle", "/sys", "/dev/vfio"):
        assert path in dp_mounts, f"the device plugin mounts {path}"
    assert dp_mounts["/sys"].get("readOnly") is True, "the device plugin sees /sys read-only"
    for name in ("node-agent", "device-plugin"):
        env = {e["name"]: e for e in container(pod, name)["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", f"{name} gets NODE_NAME"
    env = {e["name"]: e for e in container(pod, "install-cni")["env"]}
    assert env["HEDDLE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName", \
        "install-cni writes the node's name into heddle-ipam's kubeconfig (downward API spec.nodeName)"
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}, \
        "one node's dataplane restarts at a time"
    cni = container(pod, "install-cni")
    assert cni["command"] == ["/usr/local/share/heddle/install-cni.sh"], "the init container runs the image's install-cni.sh"
    assert {m["mountPath"] for m in cni["volumeMounts"]} == {"/host/cni/bin", "/host/cni/net.d", "/var/run/secrets/heddle/node"}, \
        "install-cni sees the host's CNI dirs and the node token, nothing else"


def test_a_pci_uplink_makes_the_switch_privileged_and_nothing_else_does(chart):
    objects = objects_of(render(chart, values_of("values-numa-1g.yaml")))
    _, ds = group_objects(objects, "numa")
    sw = container(ds["spec"]["template"]["spec"], "switch")
    assert sw["securityContext"] == {"privileged": True}, "a vfio-pci uplink (PCI devargs) needs a privileged switch"
    objects = objects_of(render(chart, values_of("values-node-groups.yaml")))
    for group, privileged in (("edge", False), ("core", True)):
        _, ds = group_objects(objects, group)
        sw = container(ds["spec"]["template"]["spec"], "switch")
        assert sw["securityContext"]["privileged"] is privileged, f"group {group}: privileged is {privileged}"


def test_node_group_overrides_are_deep_merged_into_both_configs(chart):
    values = values_of("values-node-groups.yaml")
    objects = objects_of(render(chart, values))
    edge_cm, _ = group_objects(objects, "edge")
    core_cm, core_ds = group_objects(objects, "core")
    edge, core = yaml.safe_load(edge_cm["data"]["switch.yaml"]), yaml.safe_load(core_cm["data"]["switch.yaml"])
    assert edge["cores"]["pmd"] == 1 and core["cores"]["pmd"] == "auto", "each group has its own cores.pmd"
    assert core["memory"]["page_size"] == "1G" and core["memory"]["socket_mem_mb"] == [4096, 4096], "core: 1G pages on 2 nodes"
    assert core["memory"]["file_prefix"] == "heddle" and core["mbufs"]["cache"] == 256, "keys a group does not set keep the defaults"
    assert core["mbufs"]["count"] == 131072, "a group's nested key wins"
    assert edge["api"]["metrics_listen"] == core["api"]["metrics_listen"] == "127.0.0.1:9109", "top-level switch keys reach every group"
    dp = yaml.safe_load(core_cm["data"]["device-plugin.yaml"])
    assert [p["resourceName"] for p in dp["vfPools"]] == ["heddle.dev/sriov_n3", "heddle.dev/sriov_n6"], "core's VF pools"
    assert dp["kubeletDir"] == "/var/lib/kubelet/device-plugins", "device plugin defaults are kept under a group's overrides"
    assert yaml.safe_load(edge_cm["data"]["device-plugin.yaml"])["vfPools"] == [], "edge keeps the default: no VF pools"
    counts = lambda cm: [(r["name"], r["count"]) for r in yaml.safe_load(cm["data"]["device-plugin.yaml"])["resources"]]
    assert counts(core_cm) == [("heddle.dev/vhost-user", 128), ("heddle.dev/memif", 32)], "core's resource counts"
    assert counts(edge_cm) == [("heddle.dev/vhost-user", 64), ("heddle.dev/memif", 64)], "edge keeps the default counts"
    pod = core_ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.example.com/type": "core", "kubernetes.io/os": "linux"}, "core's nodeSelector"
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "dataplane", "effect": "NoSchedule"}], \
        "a group's tolerations replace the default"


def test_an_override_can_turn_a_default_off_a_cpu_list_string_becomes_ids_and_a_group_sets_its_update_strategy(chart):
    values = {"switch": {"api": {"metrics_listen": "127.0.0.1:9109"}},
              "nodeGroups": [{"name": "a", "switch": {"api": {"metrics_listen": None}, "cores": {"pmd": "2-4,8"}},
                              "updateStrategy": {"type": "OnDelete"}}]}
    cm, ds = group_objects(objects_of(render(chart, values)), "a")
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}, "a group's updateStrategy replaces the default"
    cfg = yaml.safe_load(cm["data"]["switch.yaml"])
    assert cfg["api"]["metrics_listen"] is None, "a null override wins over the default"
    assert cfg["cores"]["pmd"] == [2, 3, 4, 8], "the CPU list 2-4,8 is rendered as CPU ids"


# ---------------------------------------------------------------- refused values


BAD_VALUES = [
    ("a core list like 1-x", {"switch": {"cores": {"pmd": "1-x"}}},
     "/switch/cores/pmd", "'1-x' does not match pattern"),
    ("a page size 3M", {"switch": {"memory": {"page_size": "3M"}}},
     "/switch/memory/page_size", "value must be one of '2M'"),
    ("a negative hugepage amount", {"switch": {"memory": {"socket_mem_mb": [1024, -512]}}},
     "/switch/memory/socket_mem_mb/1", "minimum: got -512, want 0"),
    ("a malformed PCI address of a VF pool", {"devicePlugin": {"vfPools": [
        {"resourceName": "heddle.dev/x", "selectors": {"rootDevices": ["0000:3b:00"]}}]}},
     "/devicePlugin/vfPools/0/selectors/rootDevices/0", "'0000:3b:00' does not match pattern"),
    ("a malformed PCI address of a port", {"switch": {"ports": [
        {"name": "up", "devargs": "0000:3b:0.0", "mode": "trunk", "vlans": [100]}]}},
     "/switch/ports/0/devargs", "'0000:3b:0.0' does not match pattern"),
    ("a VLAN outside 1-4094 on an access port", {"switch": {"ports": [
        {"name": "p", "devargs": "net_af_packet0,iface=eth1", "mode": "access", "vlan": 4095}]}},
     "/switch/ports/0/vlan", "maximum: got 4,095, want 4,094"),
    ("a VLAN outside 1-4094 in a trunk", {"switch": {"ports": [
        {"name": "p", "devargs": "net_af_packet0,iface=eth1", "mode": "trunk", "vlans": [0]}]}},
     "/switch/ports/0/vlans/0", "minimum: got 0, want 1"),
    ("a VLAN outside 1-4094 in a node group's override", {"nodeGroups": [{"name": "g", "switch": {"ports": [
        {"name": "p", "devargs": "net_af_packet0,iface=eth1", "mode": "trunk", "vlans": [100], "native_vlan": 5000}]}}]},
     "/nodeGroups/0/switch/ports/0/native_vlan", "maximum: got 5,000, want 4,094"),
]


@pytest.mark.parametrize("what,values,path,message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_values_schema_refuses_before_rendering(chart, what, values, path, message):
    for step, call in (("validate_schema", lambda: chart.validate_schema(copy.deepcopy(values))),
                       ("render", lambda: render(chart, values))):
        with pytest.raises(helm_python.HelmValuesError) as err:
            call()
        text = str(err.value)
        assert f"at '{path}'" in text and message in text, (
            f"{step} refuses {what} naming {path} and saying {message!r}; got:\n{text}")


TEMPLATE_FAILURES = [
    ("pmd auto without cpus", {"switch": {"cores": {"pmd": "auto"}}},
     'cores.pmd is "auto": set nodeGroups[].cpus (or node.cpus)'),
    ("too few cpus for the PMD count", {"switch": {"cores": {"pmd": 3}}, "node": {"cpus": 3}},
     "cpus 3 is too few for cores.pmd (3 PMD CPUs + 1 control CPU): raise cpus to 4"),
    ("two groups with one name", {"nodeGroups": [{"name": "a"}, {"name": "a"}]},
     'the name "a" is used twice'),
    ("a ServiceMonitor without metrics", {"serviceMonitor": {"enabled": True}},
     "serviceMonitor.enabled needs switch.api.metrics_listen"),
    ("a socket outside the run dir", {"switch": {"api": {"socket": "/tmp/switch.sock"}}},
     "switch.api.socket /tmp/switch.sock is not under node.hostPaths.run /run/heddle"),
]


@pytest.mark.parametrize("what,values,message", TEMPLATE_FAILURES, ids=[t[0] for t in TEMPLATE_FAILURES])
def test_values_the_schema_cannot_judge_fail_the_render_with_the_fix(chart, what, values, message):
    with pytest.raises(helm_python.HelmRenderError) as err:
        render(chart, values)
    assert message in str(err.value), f"rendering {what} fails saying {message!r}; got:\n{err.value}"


# ---------------------------------------------------------------- manager and webhook


def test_manager_runs_two_replicas_with_leader_election(chart):
    objects = objects_of(render(chart, {}))
    dep = one(objects, "Deployment", f"{RELEASE}-manager")
    assert dep["spec"]["replicas"] == 2, "two manager replicas"
    c = container(dep["spec"]["template"]["spec"], "manager")
    assert c["command"] == ["heddle-manager", "run"], "the manager runs the controllers"
    assert "--leader-election=true" in c["args"] and "--lease-name=heddle-manager" in c["args"], "leader election flags"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "POD_NAME is the identity"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", "POD_NAMESPACE holds the Lease"
    role = one(objects, "Role", f"{RELEASE}-manager-leader")
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["heddle-manager"],
            "verbs": ["get", "update"]} in role["rules"], "the manager may read and renew only its own Lease"
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]} in role["rules"], \
        "the manager may create the Lease (RBAC cannot name an object before it exists)"
    assert len(role["rules"]) == 2, f"the leader Role grants nothing else: {role['rules']}"


def test_rbac_grants_each_component_exactly_the_verbs_audited_against_its_code(chart):
    """The verb sets below were checked call by call against the Api calls in manager/src
    (node_agent.rs, cni_ipam/cluster.rs, controller/{mod,blocks,gc}.rs, webhook.rs, leader.rs);
    templates/rbac.yaml names the code beside each rule. A rule added or widened fails here."""
    objects = objects_of(render(chart, {}))

    def verbs(role):
        out = set()
        for r in role["rules"]:
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    out |= {(g, res, v) for v in r["verbs"]}
        return out

    node = verbs(one(objects, "ClusterRole", f"{RELEASE}-node"))
    assert node == {("", "nodes", "get"), ("heddle.dev", "providernetworks", "list"),
                    ("heddle.dev", "providernetworks", "watch"), ("heddle.dev", "networks", "get"),
                    ("heddle.dev", "clusternetworks", "get"),
                    *{("heddle.dev", "networkaddressblocks", v) for v in ("get", "list", "create", "update")}}, \
        f"node agent + heddle-ipam verbs: {sorted(node)}"
    webhook = verbs(one(objects, "ClusterRole", f"{RELEASE}-webhook"))
    assert webhook == {("heddle.dev", "providernetworks", "get")}, f"the webhook only reads provider networks: {webhook}"
    manager = verbs(one(objects, "ClusterRole", f"{RELEASE}-manager"))
    h = "heddle.dev"
    assert manager == {
        *{(h, r, v) for r in ("networks", "clusternetworks", "providernetworks") for v in ("get", "list", "watch")},
        (h, "networks/status", "patch"), (h, "clusternetworks/status", "patch"),
        (h, "providernetworks/status", "update"),
        (h, "networks/finalizers", "update"), (h, "clusternetworks/finalizers", "update"),
        *{(h, "networkallocations", v) for v in ("get", "list", "update", "delete")},
        *{(h, "networkaddressblocks", v) for v in ("get", "list", "create", "update", "delete")},
        ("k8s.cni.cncf.io", "network-attachment-definitions", "create"),
        ("k8s.cni.cncf.io", "network-attachment-definitions", "patch"),
        ("", "pods", "list"), ("", "nodes", "list"),
    }, f"manager verbs: {sorted(manager)}"
    for v in manager:
        assert v[2] not in ("deletecollection", "*") and v[1] != "*", f"the manager never wildcards: {v}"
    # It deletes only what IPAM retires, always with a resourceVersion precondition: a migrated
    # NetworkAllocation, and the empty address blocks of nodes that left.
    assert {v for v in manager if v[2] == "delete"} == {("heddle.dev", "networkallocations", "delete"),
                                                        ("heddle.dev", "networkaddressblocks", "delete")}
    assert ("", "secrets", "get") not in manager | node | webhook, "no component reads Secrets"


def _pem(b64):
    return base64.b64decode(b64).decode()


def test_generated_webhook_certificate_is_signed_by_the_ca_bundle_for_the_service_name(chart, tmp_path):
    objects = objects_of(render(chart, {}))
    secret = one(objects, "Secret", f"{RELEASE}-webhook-tls")
    vwc = one(objects, "ValidatingWebhookConfiguration", RELEASE)
    hook = vwc["webhooks"][0]
    assert hook["clientConfig"]["service"] == {"name": f"{RELEASE}-webhook", "namespace": NAMESPACE,
                                               "path": "/validate", "port": 443}, "the webhook is called at POST /validate"
    assert hook["rules"][0]["resources"] == ["networks", "clusternetworks", "providernetworks"], "the three kinds it judges"
    assert hook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"], "caBundle is the CA of the served certificate"
    (tmp_path / "ca.pem").write_text(_pem(secret["data"]["ca.crt"]))
    (tmp_path / "tls.pem").write_text(_pem(secret["data"]["tls.crt"]))
    (tmp_path / "tls.key").write_text(_pem(secret["data"]["tls.key"]))
    host = f"{RELEASE}-webhook.{NAMESPACE}.svc"
    r = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.pem", "-verify_hostname", host, tmp_path / "tls.pem"],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"openssl verifies the serving certificate for {host} against caBundle: {r.stdout}{r.stderr}"
    pub = [subprocess.run(["openssl", *cmd], capture_output=True, text=True, check=True).stdout for cmd in
           (["x509", "-in", tmp_path / "tls.pem", "-noout", "-pubkey"], ["pkey", "-in", tmp_path / "tls.key", "-pubout"])]
    assert pub[0] == pub[1], "tls.key is the key of tls.crt"
    dep = one(objects, "Deployment", f"{RELEASE}-webhook")
    vol = dep["spec"]["template"]["spec"]["volumes"][0]
    assert vol["secret"]["secretName"] == secret["metadata"]["name"], "the webhook serves the generated Secret"


def test_cert_manager_certificate_feeds_the_webhook_and_its_ca_is_injected(chart):
    objects = objects_of(render(chart, values_of("values-cert-manager.yaml")))
    assert by_kind(objects, "Secret") and all(s["metadata"]["name"] != f"{RELEASE}-webhook-tls" for s in by_kind(objects, "Secret")), \
        "with cert-manager the chart generates no webhook Secret itself"
    cert = one(objects, "Certificate", f"{RELEASE}-webhook")
    vwc = one(objects, "ValidatingWebhookConfiguration", RELEASE)
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{RELEASE}-webhook", \
        "cainjector fills caBundle from the serving Certificate"
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"], "no caBundle of the chart's own"
    assert f"{RELEASE}-webhook.{NAMESPACE}.svc" in cert["spec"]["dnsNames"], "the certificate names the Service"
    issuer = one(objects, "Issuer", cert["spec"]["issuerRef"]["name"])
    ca = one(objects, "Certificate", f"{RELEASE}-webhook-ca")
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"] and ca["spec"]["isCA"], "a CA Issuer signs it"
    dep = one(objects, "Deployment", f"{RELEASE}-webhook")
    assert dep["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == cert["spec"]["secretName"], \
        "the webhook serves the Certificate's Secret"
    one(objects, "ServiceMonitor", f"{RELEASE}-switch")


# ---------------------------------------------------------------- example heddle.dev objects


def test_example_networks_validate_against_the_charts_crds(chart):
    validators = crd_validators()
    examples = example_heddle_objects(chart)
    kinds = {d["kind"] for _, d in examples}
    assert {"ProviderNetwork", "Network", "ClusterNetwork"} <= kinds, f"examples cover the three kinds: {kinds}"
    for source, doc in examples:
        key = (doc["apiVersion"], doc["kind"])
        assert key in validators, f"{source}: {key} is served by the chart's CRDs"
        errors = [f"{list(e.path)}: {e.message}" for e in validators[key].iter_errors(doc)]
        assert errors == [], f"{source}: {doc['kind']} {doc['metadata']['name']} fits the CRD schema: {errors}"


def test_the_crd_validation_refuses_a_vlan_outside_1_4094(chart):
    """Control: the CRD validation above can fail."""
    validators = crd_validators()
    _, net = next((s, d) for s, d in example_heddle_objects(chart) if d["kind"] == "Network")
    net = copy.deepcopy(net)
    net["spec"]["vlan"] = 5000
    errors = [e.message for e in validators[(net["apiVersion"], "Network")].iter_errors(net)]
    assert any("5000" in e for e in errors), f"a Network with VLAN 5000 is refused by the CRD schema: {errors}"


# ---------------------------------------------------------------- docs


def test_readme_worked_example_is_the_numa_example_and_renders_what_it_says(chart):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Install on a cluster"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "README's Install on a cluster section has a values block"
    example = values_of("values-numa-1g.yaml")
    assert yaml.safe_load(block.group(1)) == example, "README's worked example equals examples/values-numa-1g.yaml"
    _, ds = group_objects(objects_of(render(chart, example)), "numa")
    sw = container(ds["spec"]["template"]["spec"], "switch")
    assert sw["resources"]["limits"] == {"cpu": "5", "memory": "2Gi", "hugepages-1Gi": "4096Mi"}, \
        f"the switch asks for what the README says: {sw['resources']['limits']}"
    assert sw["securityContext"] == {"privileged": True}, "README: privileged because its ports are PCI devices"
