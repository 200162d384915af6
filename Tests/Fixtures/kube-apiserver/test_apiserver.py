#!/usr/bin/env python3
"""Self-test of apiserver.py with the real kubectl: `python3 test_apiserver.py`, as root.

Each test runs kubectl as sysmirror does against the double and compares its output and exit status with
what kubectl prints against a real 1.32 cluster. The pod stand-in is a network namespace made here with a
`sleep` as its container's main process (PID 1 of a process namespace of its own); the "agent" is a small
script that listens where sysmirror's agent would and says who it is; `Rollout` adds a second such pod
through the double's control socket. All traffic stays on 127.0.0.1 inside this machine or those
namespaces, which are deleted at the end.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
IMAGE = "ghcr.io/sysmirror/agent:0.1.0"
LATE_IMAGE = "ghcr.io/sysmirror/agent:late"
MISSING_IMAGE = "registry.example/missing:1"
POD = "web-7d9f8b-x2x4q"

AGENT = """#!/usr/bin/env python3
# Stands in for `sysmirror agent`: listens on --listen and tells each connection who it is; --fail exits 3.
import os, socket, sys
args = sys.argv[1:]
if "--fail" in args:
    print("agent: cannot start: no such thing", file=sys.stderr, flush=True)
    sys.exit(3)
host, port = args[args.index("--listen") + 1].rsplit(":", 1)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((host, int(port)))
server.listen(8)
print("listening", flush=True)
while True:
    connection, _ = server.accept()
    connection.sendall(("agent uid=%d pid=%d\\n" % (os.getuid(), os.getpid())).encode())
    connection.close()
"""

# What sysmirror's AgentPlan puts in --custom for an ephemeral agent.
CUSTOM = {"securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": False, "runAsUser": 0,
                              "capabilities": {"add": ["SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"], "drop": ["ALL"]}},
          "terminationMessagePolicy": "FallbackToLogsOnError"}


def targetless_manifest(name, command):
    """The pod sysmirror creates for --target targetless."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "sysmirror"}},
            "spec": {"containers": [{
                "name": "agent", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": command,
                "securityContext": {"runAsUser": 65534, "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
                "terminationMessagePolicy": "FallbackToLogsOnError"}],
                "restartPolicy": "Never", "activeDeadlineSeconds": 43200, "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1}}


def children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return [int(child) for child in f.read().split()]


def wait_until(what, predicate, seconds=10.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class PodStandIn:
    """A network namespace with lo up and a `sleep` that is PID 1 of its own process namespace."""

    def __init__(self, name):
        self.netns = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        self.holder = subprocess.Popen(["ip", "netns", "exec", name, "unshare", "--pid", "--fork", "--mount-proc",
                                        "sleep", "3600"], start_new_session=True)
        self.pid = wait_until("the pod's main process", lambda: children(self.holder.pid))[0]

    def remove(self):
        os.killpg(self.holder.pid, signal.SIGKILL)
        self.holder.wait()
        subprocess.run(["ip", "netns", "delete", self.netns], check=True)


class Double:
    """apiserver.py serving two clusters, and a kubeconfig for them."""

    def __init__(self, directory, pod):
        self.directory = directory
        os.makedirs(directory)
        agent = os.path.join(directory, "agent")
        with open(agent, "w") as f:
            f.write(AGENT)
        os.chmod(agent, 0o755)
        state = {
            "clusters": {"standin": {"ephemeral_containers": True, "portforward": {"idle_timeout": 30}},
                         "legacy": {"ephemeral_containers": False, "portforward": {"websocket": False}}},
            "tokens": {"dev-token": "dev", "v": "viewer"},
            "namespaces": {"default": {}, "secure": {"pod_security": "baseline"}},
            "forbid": {"viewer": [["patch", "pods", "ephemeralcontainers"]]},
            "images": {IMAGE: {"start_seconds": 1.0}, LATE_IMAGE: {"start_seconds": 0.1, "listen_delay_seconds": 1.0}},
            "agent_binary": agent,
            "pods": [
                {"name": POD, "namespace": "default", "labels": {"app": "web"}, "created": "2026-11-27T05:00:00Z",
                 "containers": ["istio-proxy", "app"], "netns": pod.netns, "pid": pod.pid,
                 "owner": {"kind": "ReplicaSet", "name": "web-7d9f8b"}},
                {"name": "web-7d9f8b-zz9kq", "namespace": "default", "labels": {"app": "web"},
                 "created": "2026-11-27T05:10:00Z", "containers": ["app"], "ready": False, "netns": pod.netns,
                 "pid": pod.pid, "owner": {"kind": "ReplicaSet", "name": "web-7d9f8b"}},
                {"name": "web-0", "namespace": "secure", "labels": {"app": "vault"}, "created": "2026-11-27T05:00:00Z",
                 "containers": ["app"], "netns": pod.netns, "pid": pod.pid},
            ],
            "deployments": [{"name": "web", "namespace": "default", "selector": {"app": "web"}}],
            "statefulsets": [{"name": "vault", "namespace": "secure", "selector": {"app": "vault"}}],
        }
        self.state = os.path.join(directory, "state.json")
        with open(self.state, "w") as f:
            json.dump(state, f)
        self.calls = os.path.join(directory, "calls.jsonl")
        ready = os.path.join(directory, "ready.json")
        self.server = subprocess.Popen([sys.executable, os.path.join(HERE, "apiserver.py"), "serve", self.state,
                                        self.calls, ready])
        wait_until("the double to be ready", lambda: os.path.exists(ready) or self.server.poll() is not None)
        with open(ready) as f:
            self.ready = json.load(f)
        self.kubeconfig = os.path.join(directory, "kubeconfig")
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "dev",
            "contexts": [{"name": "dev", "context": {"cluster": "standin", "user": "dev", "namespace": "default"}},
                         {"name": "viewer", "context": {"cluster": "standin", "user": "viewer"}},
                         {"name": "legacy", "context": {"cluster": "legacy", "user": "dev"}},
                         {"name": "stranger", "context": {"cluster": "standin", "user": "stranger"}}],
            "clusters": [{"name": name, "cluster": {"server": url, "certificate-authority": self.ready["ca"]}}
                         for name, url in self.ready["servers"].items()],
            "users": [{"name": "dev", "user": {"token": "dev-token"}}, {"name": "viewer", "user": {"token": "v"}},
                      {"name": "stranger", "user": {"token": "not-a-token"}}]}
        with open(self.kubeconfig, "w") as f:
            json.dump(config, f)
        # kubectl's discovery cache goes under HOME: one of its own for each run.
        self.environment = {"PATH": os.environ["PATH"], "HOME": directory, "KUBECONFIG": self.kubeconfig}

    def kubectl(self, *arguments, input=None):
        return subprocess.run([KUBECTL, *arguments], input=input, capture_output=True, text=True,
                              env=self.environment, timeout=60)

    def recorded(self):
        with open(self.calls) as f:
            return [json.loads(line) for line in f]

    def debug(self, pod, container, target="app", image=IMAGE, flags=(), command=None):
        """sysmirror's `kubectl debug` call."""
        custom = os.path.join(self.directory, "custom-%s.json" % container)
        with open(custom, "w") as f:
            json.dump(CUSTOM, f)
        command = command or ["/usr/local/bin/sysmirror", "agent", "--listen", "127.0.0.1:24680", "--pid", "1"]
        return self.kubectl(*flags, "--request-timeout", "30s", "debug", "pod/" + pod, "--image", image,
                            "--image-pull-policy", "IfNotPresent", "--container", container, "--target", target,
                            "--profile", "general", "--custom", custom, "--quiet", "--", *command)

    def pod(self, name, namespace="default"):
        answer = self.kubectl("get", "pod", name, "-n", namespace, "-o", "json")
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)

    def container_state(self, pod, container):
        status = self.pod(pod)["status"]
        for entry in status.get("ephemeralContainerStatuses", []) + status.get("containerStatuses", []):
            if entry["name"] == container:
                return entry["state"]
        return None

    def events(self, pod):
        answer = self.kubectl("get", "events", "--field-selector",
                              "involvedObject.kind=Pod,involvedObject.name=" + pod, "-o", "json")
        assert answer.returncode == 0, answer.stderr
        return json.loads(answer.stdout)["items"]

    def control(self, request):
        """One request on the double's control socket; its answer."""
        with socket.socket(socket.AF_UNIX) as connection:
            connection.settimeout(10)
            connection.connect(self.ready["control"])
            connection.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(connection.makefile().readline())

    def stop(self):
        self.server.send_signal(signal.SIGTERM)
        return self.server.wait(timeout=10)


class KubectlChecks:
    """Checks through kubectl shared by the test classes; `self.double` is the double they talk to."""

    def assertFails(self, answer, stderr):
        self.assertEqual((answer.returncode, answer.stdout, answer.stderr), (1, "", stderr))

    def agent_process(self, launcher):
        """The agent under nsenter (which forks into the pod's process namespace)."""
        return wait_until("the agent process", lambda: children(launcher))[0]

    def forward(self, pod, port, *flags):
        """One connection through `kubectl port-forward` (as sysmirror starts it); what the agent said. The
        port-forward is recorded with kubectl's pid, and ends when that pid is killed."""
        with subprocess.Popen([KUBECTL, *flags, "port-forward", "pod/" + pod, ":%d" % port, "--address", "127.0.0.1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=self.double.environment) as forward:
            return self.forward_once(forward, pod, port)

    def forward_once(self, forward, pod, port):
        try:
            line = forward.stdout.readline()
            match = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> %d$" % port, line.strip())
            self.assertTrue(match, line + forward.stderr.read() if forward.poll() is not None else line)
            reply = b""
            with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=10) as connection:
                while not reply.endswith(b"\n"):
                    data = connection.recv(1024)
                    if not data:
                        break
                    reply += data
            forwards = [r["forwarding"] for r in self.double.recorded() if "forwarding" in r]
            self.assertEqual([f for f in forwards if f["pid"] == forward.pid],
                             [{"pid": forward.pid, "pod": pod, "namespace": "default"}])
            return reply.decode()
        finally:
            os.kill(forward.pid, signal.SIGKILL)
            forward.wait()


class KubectlAgainstTheDouble(KubectlChecks, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.scratch = tempfile.mkdtemp(prefix="apiserver-test-")
        os.chmod(cls.scratch, 0o755)  # the targetless agent runs as nobody
        cls.pod_standin = PodStandIn("sysm-selftest-%d" % os.getpid())
        cls.double = Double(os.path.join(cls.scratch, "double"), cls.pod_standin)

    @classmethod
    def tearDownClass(cls):
        cls.double.stop()
        cls.pod_standin.remove()
        shutil.rmtree(cls.scratch)

    # ---- reading ----

    def test_get_pod(self):
        pod = self.double.pod(POD)
        self.assertEqual(pod["kind"], "Pod")
        self.assertEqual([c["name"] for c in pod["spec"]["containers"]], ["istio-proxy", "app"])
        self.assertEqual(pod["status"]["phase"], "Running")
        self.assertIn({"type": "Ready", "status": "True"},
                      [{"type": c["type"], "status": c["status"]} for c in pod["status"]["conditions"]])
        self.assertFails(self.double.kubectl("get", "pod", "nope", "-o", "json"),
                         'Error from server (NotFound): pods "nope" not found\n')

    def test_get_workloads_and_their_pods(self):
        deployment = json.loads(self.double.kubectl("get", "deployment", "web", "-o", "json").stdout)
        self.assertEqual(deployment["spec"]["selector"], {"matchLabels": {"app": "web"}})
        statefulset = json.loads(self.double.kubectl("-n", "secure", "get", "statefulset", "vault", "-o", "json").stdout)
        self.assertEqual(statefulset["kind"], "StatefulSet")
        pods = json.loads(self.double.kubectl("get", "pods", "-l", "app=web", "-o", "json").stdout)
        self.assertEqual(pods["kind"], "List")
        self.assertEqual(sorted(p["metadata"]["name"] for p in pods["items"]), [POD, "web-7d9f8b-zz9kq"])
        self.assertEqual(pods["items"][0]["kind"], "Pod")
        self.assertFails(self.double.kubectl("get", "deployment", "nope", "-o", "json"),
                         'Error from server (NotFound): deployments.apps "nope" not found\n')

    def test_namespaces(self):
        found = self.double.kubectl("get", "namespace", "default", "-o", "name")
        self.assertEqual((found.returncode, found.stdout), (0, "namespace/default\n"))
        self.assertFails(self.double.kubectl("get", "namespace", "nope", "-o", "name"),
                         'Error from server (NotFound): namespaces "nope" not found\n')

    def test_client_version_needs_no_server(self):
        answer = self.double.kubectl("version", "--client", "-o", "json")
        self.assertEqual(answer.returncode, 0)
        self.assertTrue(json.loads(answer.stdout)["clientVersion"]["gitVersion"].startswith("v1.32"))

    # ---- who may do what ----

    def test_unknown_token(self):
        self.assertFails(self.double.kubectl("--context", "stranger", "get", "pod", POD, "-o", "json"),
                         "error: You must be logged in to the server (Unauthorized)\n")

    def test_viewer_may_not_add_ephemeral_containers(self):
        answer = self.double.debug(POD, "sysmirror-agent-v00001", flags=("--context", "viewer", "-n", "default"))
        self.assertFails(answer, 'Error from server (Forbidden): pods "%s" is forbidden: User "viewer" cannot patch '
                                 'resource "pods/ephemeralcontainers" in API group "" in the namespace "default"\n' % POD)
        self.assertFalse(any(r.get("ephemeral_container", {}).get("name") == "sysmirror-agent-v00001"
                             for r in self.double.recorded()))

    def test_auth_can_i(self):
        subresource = self.double.kubectl("--context", "viewer", "auth", "can-i", "patch", "pods",
                                          "--subresource=ephemeralcontainers", "-n", "default")
        self.assertEqual((subresource.returncode, subresource.stdout), (1, "no\n"))
        # kubectl reads pods/ephemeralcontainers as the pod named "ephemeralcontainers": RBAC allows that.
        named = self.double.kubectl("--context", "viewer", "auth", "can-i", "patch", "pods/ephemeralcontainers",
                                    "-n", "default")
        self.assertEqual((named.returncode, named.stdout), (0, "yes\n"))
        developer = self.double.kubectl("auth", "can-i", "patch", "pods", "--subresource=ephemeralcontainers")
        self.assertEqual((developer.returncode, developer.stdout), (0, "yes\n"))

    def test_pod_security_baseline(self):
        answer = self.double.debug("web-0", "sysmirror-agent-s00001", flags=("-n", "secure"))
        self.assertFails(answer, 'Error from server (Forbidden): pods "web-0" is forbidden: violates PodSecurity '
                                 '"baseline:latest": non-default capabilities (container "sysmirror-agent-s00001" must '
                                 'not include "DAC_READ_SEARCH", "NET_ADMIN", "SYS_PTRACE" in '
                                 'securityContext.capabilities.add)\n')

    def test_cluster_without_ephemeral_containers(self):
        answer = self.double.debug(POD, "sysmirror-agent-l00001", flags=("--context", "legacy"))
        self.assertFails(answer, 'error: ephemeral containers are disabled for this cluster (error from server: '
                                 '"the server could not find the requested resource")\n')

    def test_unknown_target_container(self):
        answer = self.double.debug(POD, "sysmirror-agent-t00001", target="nope")
        self.assertEqual((answer.returncode, answer.stdout), (1, ""))
        self.assertRegex(answer.stderr, r'^The Pod "%s" is invalid: spec\.ephemeralContainers\[\d+\]\.'
                                        r'targetContainerName: Not found: "nope"\n$' % POD)

    # ---- the agent as an ephemeral container ----

    def test_debug_starts_the_agent_and_port_forward_reaches_it(self):
        name = "sysmirror-agent-e00001"
        answer = self.double.debug(POD, name)
        self.assertEqual((answer.returncode, answer.stdout, answer.stderr), (0, "", ""))
        added = [r for r in self.double.recorded() if r.get("ephemeral_container", {}).get("name") == name]
        self.assertEqual(len(added), 1)
        self.assertEqual(added[0]["pod"], POD)
        container = added[0]["ephemeral_container"]
        self.assertEqual(container["targetContainerName"], "app")
        self.assertEqual(container["securityContext"]["capabilities"],
                         {"add": ["SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN"], "drop": ["ALL"]})
        self.assertEqual(self.double.container_state(POD, name), {"waiting": {"reason": "ContainerCreating"}})
        wait_until("the agent to run", lambda: "running" in (self.double.container_state(POD, name) or {}))
        self.assertEqual([(e["type"], e["reason"], e["message"]) for e in self.double.events(POD)
                          if e["involvedObject"].get("fieldPath") == "spec.ephemeralContainers{%s}" % name], [
            ("Normal", "Pulled", 'Container image "%s" already present on machine' % IMAGE),
            ("Normal", "Created", "Created container: " + name),
            ("Normal", "Started", "Started container " + name)])
        started = wait_until("the agent's start", lambda: [r for r in self.double.recorded()
                                                            if r.get("started_agent") == name])
        self.assertEqual(started[0]["command"][:3], ["/usr/local/bin/sysmirror", "agent", "--listen"])
        pid = started[0]["pid"]
        # The agent runs in the target container's process namespace.
        self.assertEqual(os.readlink("/proc/%d/ns/pid" % self.agent_process(pid)),
                         os.readlink("/proc/%d/ns/pid" % self.pod_standin.pid))
        self.assertEqual(self.forward(POD, 24680).split()[:2], ["agent", "uid=0"])
        # Where the WebSocket upgrade is refused kubectl falls back to SPDY: still one port-forward.
        self.assertEqual(self.forward(POD, 24680, "--context", "legacy", "-n", "default").split()[:2],
                         ["agent", "uid=0"])
        self.assertTrue(any(r.get("portforward") == "spdy" and r.get("event") == "open" for r in self.double.recorded()))

    def test_agent_that_listens_late(self):
        name = "sysmirror-agent-d00001"
        self.assertEqual(self.double.debug(POD, name, image=LATE_IMAGE,
                                           command=["/usr/local/bin/sysmirror", "agent", "--listen",
                                                    "127.0.0.1:24681"]).returncode, 0)
        wait_until("the container to run", lambda: "running" in (self.double.container_state(POD, name) or {}))
        self.assertFalse(any(r.get("started_agent") == name for r in self.double.recorded()))
        wait_until("the late agent", lambda: any(r.get("started_agent") == name for r in self.double.recorded()))

    def test_image_that_cannot_be_pulled(self):
        name = "sysmirror-agent-p00001"
        self.assertEqual(self.double.debug(POD, name, image=MISSING_IMAGE).returncode, 0)
        error = ('rpc error: code = NotFound desc = failed to pull and unpack image "%s": failed to resolve '
                 'reference "%s": %s: not found' % ((MISSING_IMAGE,) * 3))
        reasons = []

        def waiting_reason():
            state = self.double.container_state(POD, name) or {}
            reason = state.get("waiting", {}).get("reason")
            if reason and reason not in reasons:
                reasons.append(reason)
                if reason == "ErrImagePull":
                    self.assertEqual(state["waiting"]["message"], error)
            return reason == "ImagePullBackOff" and state
        state = wait_until("the back-off", waiting_reason)
        self.assertEqual(reasons, ["ContainerCreating", "ErrImagePull", "ImagePullBackOff"])
        self.assertEqual(state["waiting"]["message"], 'Back-off pulling image "%s": ErrImagePull: %s'
                         % (MISSING_IMAGE, error))
        events = [e for e in self.double.events(POD)
                  if e["involvedObject"].get("fieldPath") == "spec.ephemeralContainers{%s}" % name]
        self.assertEqual([(e["type"], e["reason"], e["message"]) for e in events], [
            ("Normal", "Pulling", 'Pulling image "%s"' % MISSING_IMAGE),
            ("Warning", "Failed", 'Failed to pull image "%s": %s' % (MISSING_IMAGE, error)),
            ("Warning", "Failed", "Error: ErrImagePull"),
            ("Normal", "BackOff", 'Back-off pulling image "%s"' % MISSING_IMAGE),
            ("Warning", "Failed", "Error: ImagePullBackOff")])
        first = events[0]
        self.assertEqual(first["involvedObject"]["kind"], "Pod")
        self.assertEqual(first["source"], {"component": "kubelet", "host": "node-1"})
        self.assertEqual((first["count"], first["reportingComponent"]), (1, "kubelet"))
        self.assertLessEqual(first["firstTimestamp"], first["lastTimestamp"])
        self.assertFalse(any(r.get("started_agent") == name for r in self.double.recorded()))

    # ---- a pod of its own ----

    def test_targetless_pod_created_and_deleted(self):
        name = "sysmirror-targetless-c00001"
        manifest = targetless_manifest(name, ["/usr/local/bin/sysmirror", "agent", "--listen", "127.0.0.1:24682",
                                              "--root", "/"])
        clean = self.double.kubectl("--request-timeout", "30s", "delete", "pods", "-l",
                                    "app.kubernetes.io/managed-by=sysmirror", "--field-selector",
                                    "status.phase!=Running,status.phase!=Pending", "--ignore-not-found", "--wait=false")
        self.assertEqual((clean.returncode, clean.stderr), (0, ""))
        created = self.double.kubectl("--request-timeout", "30s", "create", "-f", "-", "-o", "json",
                                      input=json.dumps(manifest))
        self.assertEqual(created.returncode, 0, created.stderr)
        pod = json.loads(created.stdout)
        self.assertEqual((pod["metadata"]["name"], pod["status"]["phase"]), (name, "Pending"))
        recorded = [r["created_pod"] for r in self.double.recorded() if "created_pod" in r]
        manifest["metadata"]["namespace"] = "default"  # kubectl sends the manifest with its namespace set
        self.assertIn(manifest, recorded)
        wait_until("the pod to run", lambda: self.double.pod(name)["status"]["phase"] == "Running")
        self.assertEqual([e["reason"] for e in self.double.events(name)], ["Scheduled", "Pulled", "Created", "Started"])
        started = wait_until("the agent", lambda: [r for r in self.double.recorded() if r.get("pod") == name
                                                   and "started_agent" in r])
        self.assertEqual(self.forward(name, 24682).split()[:2], ["agent", "uid=65534"])
        netns = [n.split()[0] for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.splitlines()]
        deleted = self.double.kubectl("--request-timeout", "30s", "delete", "pod", name, "--ignore-not-found",
                                      "--wait=false")
        self.assertEqual((deleted.returncode, deleted.stdout), (0, 'pod "%s" deleted\n' % name))
        self.assertIn({"deleted_pod": name}, self.double.recorded())
        self.assertFalse(os.path.exists("/proc/%d" % started[0]["pid"]))
        after = [n.split()[0] for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                        text=True).stdout.splitlines()]
        self.assertEqual(len(netns) - len(after), 1)
        again = self.double.kubectl("--request-timeout", "30s", "delete", "pod", name, "--ignore-not-found",
                                    "--wait=false")
        self.assertEqual((again.returncode, again.stdout, again.stderr), (0, "", ""))

    def test_finished_targetless_pods_are_cleaned_up(self):
        failed = "sysmirror-targetless-f00001"
        manifest = targetless_manifest(failed, ["/usr/local/bin/sysmirror", "agent", "--fail"])
        self.assertEqual(self.double.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).returncode, 0)
        pod = wait_until("the agent to fail", lambda: (lambda p: p["status"]["phase"] == "Failed" and p)(
            self.double.pod(failed)))
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        self.assertEqual((terminated["exitCode"], terminated["reason"]), (3, "Error"))
        self.assertEqual(terminated["message"], "agent: cannot start: no such thing\n")
        clean = self.double.kubectl("delete", "pods", "-l", "app.kubernetes.io/managed-by=sysmirror",
                                    "--field-selector", "status.phase!=Running,status.phase!=Pending",
                                    "--ignore-not-found", "--wait=false")
        self.assertEqual((clean.returncode, clean.stdout), (0, 'pod "%s" deleted\n' % failed))
        self.assertFails(self.double.kubectl("get", "pod", failed, "-o", "json"),
                         'Error from server (NotFound): pods "%s" not found\n' % failed)


class Rollout(KubectlChecks, unittest.TestCase):
    """A controller replacing the ready pod mid-session, through the double's control socket: the new pod
    first, then the old one Terminating, then gone, as kubectl sees a rollout."""
    NEW = "web-7d9f8b-r2new"

    def setUp(self):
        scratch = tempfile.mkdtemp(prefix="apiserver-test-")
        self.addCleanup(shutil.rmtree, scratch)
        os.chmod(scratch, 0o755)
        self.old = PodStandIn("sysm-selftest-%d-o" % os.getpid())
        self.addCleanup(self.old.remove)
        self.new = PodStandIn("sysm-selftest-%d-n" % os.getpid())
        self.addCleanup(self.new.remove)
        self.double = Double(os.path.join(scratch, "double"), self.old)
        self.addCleanup(self.double.stop)

    def names(self):
        answer = self.double.kubectl("get", "pods", "-l", "app=web", "-o", "json")
        self.assertEqual(answer.returncode, 0, answer.stderr)
        return sorted(p["metadata"]["name"] for p in json.loads(answer.stdout)["items"])

    @staticmethod
    def end(process):
        if process.poll() is None:
            process.kill()
        process.communicate()

    def test_the_ready_pod_replaced(self):
        old_agent, new_agent = "sysmirror-agent-o00001", "sysmirror-agent-n00001"
        command = ["/usr/local/bin/sysmirror", "agent", "--listen", "127.0.0.1:24690"]
        self.assertEqual(self.double.debug(POD, old_agent, command=command).returncode, 0)
        wait_until("the first agent", lambda: any(r.get("started_agent") == old_agent for r in self.double.recorded()))
        # A port-forward to the old pod, open across the rollout, as a session's is.
        forward = subprocess.Popen([KUBECTL, "port-forward", "pod/" + POD, ":24690", "--address", "127.0.0.1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=self.double.environment)
        self.addCleanup(self.end, forward)
        local = int(re.match(r"Forwarding from 127\.0\.0\.1:(\d+) ", forward.stdout.readline()).group(1))
        with socket.create_connection(("127.0.0.1", local), timeout=10) as connection:
            self.assertEqual(connection.makefile().readline().split()[:2], ["agent", "uid=0"])

        # The new pod: Running and Ready beside the old one, owned by the same ReplicaSet.
        pod = {"name": self.NEW, "namespace": "default", "labels": {"app": "web"}, "containers": ["istio-proxy", "app"],
               "netns": self.new.netns, "pid": self.new.pid, "owner": {"kind": "ReplicaSet", "name": "web-7d9f8b"}}
        self.assertEqual(self.double.control({"add_pod": pod}), {"ok": True})
        self.assertEqual(self.double.control({"add_pod": pod}), {"error": 'pods "%s" already exists' % self.NEW})
        self.assertEqual(self.names(), sorted([POD, self.NEW, "web-7d9f8b-zz9kq"]))
        added = self.double.pod(self.NEW)
        self.assertEqual(added["status"]["phase"], "Running")
        self.assertIn({"type": "Ready", "status": "True"},
                      [{"type": c["type"], "status": c["status"]} for c in added["status"]["conditions"]])
        self.assertEqual([(o["kind"], o["name"], o["controller"]) for o in added["metadata"]["ownerReferences"]],
                         [("ReplicaSet", "web-7d9f8b", True)])
        self.assertNotIn("deletionTimestamp", added["metadata"])

        # The old pod Terminating: still listed and Running, its deletion under way; the agent got SIGTERM.
        deletion = {"namespace": "default", "name": POD, "terminating_seconds": 2}
        self.assertEqual(self.double.control({"delete_pod": deletion}), {"ok": True})
        terminating = self.double.pod(POD)
        self.assertEqual(terminating["metadata"]["deletionGracePeriodSeconds"], 30)
        self.assertIn("deletionTimestamp", terminating["metadata"])
        self.assertEqual(terminating["status"]["phase"], "Running")
        self.assertEqual(self.names(), sorted([POD, self.NEW, "web-7d9f8b-zz9kq"]))
        state = wait_until("the first agent to stop",
                           lambda: self.double.container_state(POD, old_agent).get("terminated"))
        self.assertEqual((state["exitCode"], state["reason"]), (143, "Error"))
        self.assertEqual(sorted(e["message"] for e in self.double.events(POD) if e["reason"] == "Killing"),
                         ["Stopping container app", "Stopping container istio-proxy",
                          "Stopping container " + old_agent])

        # Gone: not found, not listed, no port-forward to it; a new stream on the open one gets the kubelet's
        # error, and kubectl ends.
        wait_until("the old pod to go", lambda: {"removed_pod": POD} in self.double.recorded())
        self.assertFails(self.double.kubectl("get", "pod", POD, "-o", "json"),
                         'Error from server (NotFound): pods "%s" not found\n' % POD)
        self.assertEqual(self.names(), [self.NEW, "web-7d9f8b-zz9kq"])
        deployment = self.double.kubectl("get", "deployment", "web", "-o", "json")
        self.assertEqual(json.loads(deployment.stdout)["spec"]["selector"], {"matchLabels": {"app": "web"}})
        with socket.create_connection(("127.0.0.1", local), timeout=10) as connection:
            self.assertEqual(connection.recv(100), b"")
        self.assertEqual(forward.wait(timeout=10), 1)
        said = forward.stderr.read()
        self.assertIn("failed to find sandbox", said)
        self.assertTrue(said.endswith("error: lost connection to pod\n"), said)
        self.assertTrue(any(r.get("event") == "refused" and "failed to find sandbox" in r.get("message", "")
                            for r in self.double.recorded()))
        self.assertFails(self.double.kubectl("port-forward", "pod/" + POD, ":24690", "--address", "127.0.0.1"),
                         'Error from server (NotFound): pods "%s" not found\n' % POD)
        self.assertFails(self.double.debug(POD, "sysmirror-agent-o00002", command=command),
                         'Error from server (NotFound): pods "%s" not found\n' % POD)

        # An agent in the new pod runs in its process namespace, and its port-forward reaches it there.
        self.assertEqual(self.double.debug(self.NEW, new_agent, command=command).returncode, 0)
        started = wait_until("the new agent", lambda: [r for r in self.double.recorded()
                                                       if r.get("started_agent") == new_agent])
        self.assertEqual(started[0]["pod"], self.NEW)
        self.assertEqual(os.readlink("/proc/%d/ns/pid" % self.agent_process(started[0]["pid"])),
                         os.readlink("/proc/%d/ns/pid" % self.new.pid))
        self.assertEqual(self.forward(self.NEW, 24690).split()[:2], ["agent", "uid=0"])

    def test_deleting_a_pod_with_no_replacement(self):
        deletion = {"namespace": "default", "name": POD, "terminating_seconds": 0.5}
        self.assertEqual(self.double.control({"delete_pod": deletion}), {"ok": True})
        wait_until("the pod to go", lambda: {"removed_pod": POD} in self.double.recorded())
        self.assertEqual(self.names(), ["web-7d9f8b-zz9kq"])
        self.assertEqual(self.double.control({"delete_pod": deletion}), {"error": 'pods "%s" not found' % POD})
        self.assertEqual(self.double.control({"scale": {}}), {"error": "ValueError: unknown request: ['scale']"})


class Shutdown(unittest.TestCase):
    def test_sigterm_stops_agents_and_removes_namespaces(self):
        scratch = tempfile.mkdtemp(prefix="apiserver-test-")
        os.chmod(scratch, 0o755)
        pod = PodStandIn("sysm-selftest-%d-b" % os.getpid())
        double = Double(os.path.join(scratch, "double"), pod)
        try:
            self.assertEqual(double.debug(POD, "sysmirror-agent-z00001").returncode, 0)
            manifest = targetless_manifest("sysmirror-targetless-z00001",
                                           ["/usr/local/bin/sysmirror", "agent", "--listen", "127.0.0.1:24683"])
            self.assertEqual(double.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).returncode, 0)
            started = wait_until("both agents", lambda: (lambda s: len(s) == 2 and s)(
                [r["pid"] for r in double.recorded() if "started_agent" in r]))
            created = "sysm-pod-%d-" % double.server.pid
            self.assertTrue(any(n.startswith(created) for n in os.listdir("/var/run/netns")))
            self.assertEqual(double.stop(), 0)
            for pid in started:
                self.assertFalse(os.path.exists("/proc/%d" % pid), "agent %d outlived the double" % pid)
            self.assertFalse(any(n.startswith(created) for n in os.listdir("/var/run/netns")))
        finally:
            if double.server.poll() is None:
                double.stop()
            pod.remove()
            shutil.rmtree(scratch)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("test_apiserver.py needs root (network namespaces)")
    unittest.main()
