#!/usr/bin/env python3
"""A stand-in for a Kubernetes cluster's API server and kubelet, and for kubectl, in one file.

There is no cluster on the test machines. Run as `kube_standin.py serve STATE SOCKET LOG` (as root), it
keeps pods, deployments and statefulsets, answers the kubectl calls sysmirror makes with JSON shaped like
the real API objects, and with kubectl's own error messages and exit codes. Its "kubelet" runs the real
agent binary for an ephemeral container, inside the pod stand-in's network namespace and its container's
process namespace (where the container's main process is PID 1, as under a real kubelet).

Invoked as `kubectl` (a symlink beside it), it is the client: it sends its arguments to the server over
the unix socket next to it and prints the answer. `kubectl port-forward` really forwards: it listens on
127.0.0.1 here and relays each connection through the server to the pod's port.
"""
import ctypes
import datetime
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

SOCKET_NAME = "apiserver.sock"
CLONE_NEWNET = 0x40000000
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def relay(a, b):
    """Copies bytes both ways until both directions end."""
    def pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join()
    a.close()
    b.close()


class Failure(Exception):
    def __init__(self, stderr, status=1):
        self.stderr = stderr
        self.status = status


class Cluster:
    def __init__(self, state_path, log_path):
        with open(state_path) as f:
            self.state = json.load(f)
        self.log_path = log_path
        self.lock = threading.Lock()
        self.agents = {}  # (namespace, pod, container) -> (Popen, log path, started)
        self.counter = 0

    # ---- bookkeeping ----

    def record(self, entry):
        with open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def pod(self, namespace, name):
        for pod in self.state["pods"]:
            if pod["namespace"] == namespace and pod["name"] == name and not pod.get("deleted"):
                return pod
        raise Failure('Error from server (NotFound): pods "%s" not found\n' % name)

    def check_namespace(self, namespace):
        if namespace not in self.state["namespaces"]:
            raise Failure('Error from server (NotFound): namespaces "%s" not found\n' % namespace)

    def authorize(self, user, verb, resource, namespace, name=None, group=""):
        for denied in self.state.get("forbid", {}).get(user, []):
            if denied == [verb, resource]:
                kind = resource.split("/")[0] + ("." + group if group else "")
                subject = '%s "%s"' % (kind, name) if name else kind
                raise Failure(
                    'Error from server (Forbidden): %s is forbidden: User "%s" cannot %s resource "%s" in API group '
                    '"%s" in the namespace "%s"\n' % (subject, user, verb, resource, group, namespace))

    # ---- objects as the API shows them ----

    def pod_object(self, pod):
        ephemeral = [dict(c) for c in pod.get("ephemeral", [])]
        statuses = [self.ephemeral_status(pod, c) for c in ephemeral]
        ready = pod.get("ready", True)
        containers = [{"name": name, "image": "registry.example/%s:1.4.2" % name, "imagePullPolicy": "IfNotPresent",
                       "resources": {}, "terminationMessagePath": "/dev/termination-log",
                       "terminationMessagePolicy": "File"} for name in pod["containers"]]
        container_statuses = []
        for name in pod["containers"]:
            running = ready or name != pod["containers"][0]
            state = ({"running": {"startedAt": pod["created"]}} if running else
                     {"waiting": {"reason": "CrashLoopBackOff",
                                  "message": "back-off 5m0s restarting failed container=%s pod=%s" % (name, pod["name"])}})
            container_statuses.append({
                "name": name, "ready": running, "restartCount": 0 if running else 7, "started": running,
                "state": state, "image": "registry.example/%s:1.4.2" % name,
                "imageID": "registry.example/%s@sha256:%s" % (name, "0" * 64),
                "containerID": "containerd://%s" % ("%064x" % hash((pod["name"], name)))[-64:]})
        phase = pod.get("phase", "Running")
        conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": pod["created"]}
                      for t in ("PodReadyToStartContainers", "Initialized", "PodScheduled")]
        for t in ("Ready", "ContainersReady"):
            conditions.append({"type": t, "status": "True" if ready and phase == "Running" else "False",
                               "lastProbeTime": None, "lastTransitionTime": pod["created"]}
                              | ({} if ready else {"reason": "ContainersNotReady",
                                                    "message": "containers with unready status: [%s]" % pod["containers"][0]}))
        owner = pod.get("owner")
        metadata = {"name": pod["name"], "namespace": pod["namespace"], "uid": pod.setdefault("uid", "%08x-0000-4000-8000-%012x" % (abs(hash(pod["name"])) % 2**32, abs(hash(pod["namespace"])) % 2**48)),
                    "resourceVersion": str(1000 + len(ephemeral)), "creationTimestamp": pod["created"],
                    "labels": pod.get("labels", {}), "annotations": pod.get("annotations", {})}
        if owner:
            metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner["kind"], "name": owner["name"],
                                            "uid": "5f6e7d8c-0000-4000-8000-000000000001", "controller": True,
                                            "blockOwnerDeletion": True}]
        spec = {"containers": containers, "restartPolicy": pod.get("restartPolicy", "Always"),
                "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "nodeName": "node-1",
                "serviceAccountName": "default", "securityContext": {}, "schedulerName": "default-scheduler"}
        if ephemeral:
            spec["ephemeralContainers"] = ephemeral
        if "activeDeadlineSeconds" in pod:
            spec["activeDeadlineSeconds"] = pod["activeDeadlineSeconds"]
        status = {"phase": phase, "conditions": conditions, "hostIP": "10.0.0.5", "podIP": "10.244.1.17",
                  "startTime": pod["created"], "containerStatuses": container_statuses, "qosClass": "BestEffort"}
        if statuses:
            status["ephemeralContainerStatuses"] = statuses
        if pod.get("own_agent"):
            agent = self.ephemeral_status(pod, {"name": "agent", "image": pod["image"]})
            status["containerStatuses"] = [dict(agent, ready="running" in agent["state"])]
            status["phase"] = ("Running" if "running" in agent["state"] else
                               "Pending" if "waiting" in agent["state"] else "Succeeded")
            for condition in conditions:
                if condition["type"] in ("Ready", "ContainersReady"):
                    condition["status"] = "True" if status["phase"] == "Running" else "False"
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}

    def ephemeral_status(self, pod, container):
        base = {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                "restartCount": 0, "lastState": {}}
        if container["image"] not in self.state["images"]:
            pulls = pod.setdefault("pulls", {})
            pulls[container["name"]] = pulls.get(container["name"], 0) + 1
            if pulls[container["name"]] == 1:
                return base | {"state": {"waiting": {"reason": "ErrImagePull", "message":
                    'failed to pull and unpack image "%s": failed to resolve reference "%s": %s: not found'
                    % (container["image"], container["image"], container["image"])}}}
            return base | {"state": {"waiting": {"reason": "ImagePullBackOff",
                                                 "message": 'Back-off pulling image "%s"' % container["image"]}}}
        key = (pod["namespace"], pod["name"], container["name"])
        agent = self.agents.get(key)
        if agent is None or time.time() < agent[2]:
            return base | {"state": {"waiting": {"reason": "ContainerCreating"}}}
        process, log, _ = agent
        if process.poll() is None:
            return base | {"state": {"running": {"startedAt": now()}}, "containerID": "containerd://%064x" % process.pid}
        with open(log, errors="replace") as f:
            tail = "".join(f.readlines()[-80:])
        return base | {"state": {"terminated": {"exitCode": process.returncode,
                                                "reason": "Completed" if process.returncode == 0 else "Error",
                                                "message": tail, "startedAt": now(), "finishedAt": now()}}}

    def events(self, pod):
        items = []
        for container in pod.get("ephemeral", []):
            if container["image"] not in self.state["images"]:
                items.append({"apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": "Failed",
                              "metadata": {"name": "%s.17f3a" % pod["name"], "namespace": pod["namespace"]},
                              "involvedObject": {"kind": "Pod", "name": pod["name"], "namespace": pod["namespace"],
                                                 "fieldPath": "spec.ephemeralContainers{%s}" % container["name"]},
                              "message": 'Failed to pull image "%s": rpc error: code = NotFound desc = failed to pull '
                                         'and unpack image "%s": failed to resolve reference "%s": %s: not found'
                                         % ((container["image"],) * 4),
                              "source": {"component": "kubelet", "host": "node-1"}})
        return items

    # ---- the kubelet's part ----

    def start_agent(self, pod, name, command, user, root_netns=None):
        binary = self.state["agent_binary"]
        log = os.path.join(os.path.dirname(self.log_path), "agent-%s-%s.log" % (pod["name"], name))
        arguments = [binary] + command[1:]
        if root_netns:  # a pod of its own: its network namespace, and the agent as the pod's user
            prefix = ["ip", "netns", "exec", root_netns, "setpriv", "--reuid=%d" % user, "--regid=%d" % user,
                      "--clear-groups", "--"]
        else:  # the target container's process namespace, where its main process is PID 1
            prefix = ["ip", "netns", "exec", pod["netns"], "nsenter", "-t", str(pod["pid"]), "--pid", "--",
                      "unshare", "--mount", "--mount-proc", "--"]
        with open(log, "w") as out:
            process = subprocess.Popen(prefix + arguments, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                       start_new_session=True)
        delay = self.state["images"][pod.get("image") or self.image_of(pod, name)]["start_seconds"]
        self.agents[(pod["namespace"], pod["name"], name)] = (process, log, time.time() + delay)
        self.record({"started_agent": name, "pod": pod["name"], "pid": process.pid, "command": command})

    @staticmethod
    def image_of(pod, name):
        return next(c["image"] for c in pod.get("ephemeral", []) if c["name"] == name)

    def stop_all(self):
        for process, _, _ in self.agents.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for pod in self.state["pods"]:
            if pod.get("own_agent"):
                subprocess.run(["ip", "netns", "delete", pod["netns"]], stderr=subprocess.DEVNULL)

    # ---- kubectl's commands ----

    def handle(self, argv, env, stdin):
        flags = {"namespace": None, "context": None, "kubeconfig": None}
        rest = []
        i = 0
        names = {"-n": "namespace", "--namespace": "namespace", "--context": "context", "--kubeconfig": "kubeconfig"}
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                rest += argv[i:]
                break
            if arg in names:
                flags[names[arg]] = argv[i + 1]
                i += 2
                continue
            if arg == "--request-timeout":
                i += 2
                continue
            rest.append(arg)
            i += 1
        if rest[:2] == ["version", "--client"]:
            version = self.state.get("kubectl_version", "v1.32.3")
            minor = version.split(".")[1]
            return json.dumps({"clientVersion": {"major": "1", "minor": minor, "gitVersion": version,
                                                 "gitCommit": "32cc146f75aad04beaaa245a7157eb35063a9f99",
                                                 "gitTreeState": "clean", "buildDate": "2025-03-11T19:52:21Z",
                                                 "goVersion": "go1.23.6", "compiler": "gc",
                                                 "platform": "linux/amd64"},
                               "kustomizeVersion": "v5.5.0"}, indent=2) + "\n"
        with self.lock:
            user, namespace = self.login(flags, env)
            namespace = flags["namespace"] or namespace
            self.record({"user": user, "namespace": namespace, "args": rest})
            return self.command(rest, user, namespace, stdin)

    def login(self, flags, env):
        """The context's user and namespace, from the kubeconfig as kubectl finds it; the server must be ours."""
        paths = [flags["kubeconfig"]] if flags["kubeconfig"] else \
            [p for p in env.get("KUBECONFIG", "").split(":") if p] or [os.path.join(env.get("HOME", "/"), ".kube/config")]
        config = {"contexts": [], "clusters": [], "users": []}
        for path in paths:
            try:
                with open(path) as f:
                    loaded = json.load(f)
            except FileNotFoundError:
                if flags["kubeconfig"]:
                    raise Failure('error: stat %s: no such file or directory\n' % path)
                continue
            for key in ("contexts", "clusters", "users"):
                config[key] += loaded.get(key) or []
            config.setdefault("current-context", loaded.get("current-context"))
        name = flags["context"] or config.get("current-context")
        if not config["contexts"] and not flags["context"]:
            raise Failure("error: invalid configuration: no configuration has been provided, try setting "
                          "KUBERNETES_MASTER environment variable\n")
        context = next((c["context"] for c in config["contexts"] if c["name"] == name), None)
        if context is None:
            raise Failure("Error in configuration: context was not found for specified context: %s\n" % name)
        cluster = next((c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"]), {})
        server = cluster.get("server", "http://localhost:8080")
        if server not in self.state["servers"]:
            host = server.split("://")[-1]
            raise Failure(
                'E1127 05:20:01.000000   12345 memcache.go:265] "Unhandled Error" err="couldn\'t get current server '
                'API group list: Get \\"%s/api?timeout=30s\\": dial tcp %s: connect: connection refused"\n'
                "The connection to the server %s was refused - did you specify the right host or port?\n"
                % (server, host, host))
        self.server = self.state["servers"][server]
        return context["user"], context.get("namespace", "default")

    def command(self, args, user, namespace, stdin):
        verb = args[0]
        if verb == "get":
            return self.get(args[1:], user, namespace)
        if verb == "debug":
            return self.debug(args[1:], user, namespace)
        if verb == "port-forward":
            target = args[1].split("/")[-1]
            self.authorize(user, "get", "pods", namespace, target)
            pod = self.pod(namespace, target)
            self.authorize(user, "create", "pods/portforward", namespace, target)
            port = int(args[2].lstrip(":"))
            return json.dumps({"forward": {"namespace": namespace, "pod": pod["name"], "port": port}})
        if verb == "create":
            return self.create(json.loads(stdin), user, namespace)
        if verb == "delete":
            return self.delete(args[1:], user, namespace)
        raise Failure('error: unknown command "%s" for "kubectl"\n' % verb)

    def get(self, args, user, namespace):
        kind, rest = args[0], args[1:]
        name = rest[0] if rest and not rest[0].startswith("-") else None
        if kind in ("namespace", "namespaces", "ns"):
            self.authorize(user, "get", "namespaces", namespace, name)
            if name not in self.state["namespaces"]:
                raise Failure('Error from server (NotFound): namespaces "%s" not found\n' % name)
            return "namespace/%s\n" % name
        if kind in ("pod", "pods") and name:
            self.authorize(user, "get", "pods", namespace, name)
            return json.dumps(self.pod_object(self.pod(namespace, name)), indent=4) + "\n"
        if kind == "pods":
            self.authorize(user, "list", "pods", namespace)
            selector = dict(part.split("=") for part in rest[rest.index("-l") + 1].split(","))
            items = [self.pod_object(p) for p in self.state["pods"] if p["namespace"] == namespace
                     and not p.get("deleted") and selector.items() <= p.get("labels", {}).items()]
            return json.dumps({"apiVersion": "v1", "kind": "List", "items": items,
                               "metadata": {"resourceVersion": ""}}, indent=4) + "\n"
        if kind in ("deployment", "statefulset"):
            group = "apps"
            self.authorize(user, "get", kind + "s", namespace, name, group)
            for workload in self.state[kind + "s"]:
                if workload["namespace"] == namespace and workload["name"] == name:
                    return json.dumps({
                        "apiVersion": "apps/v1", "kind": kind.capitalize().replace("set", "Set"),
                        "metadata": {"name": name, "namespace": namespace, "generation": 3,
                                     "creationTimestamp": "2026-11-20T09:00:00Z"},
                        "spec": {"replicas": workload.get("replicas", 2),
                                 "selector": {"matchLabels": workload["selector"]},
                                 "template": {"metadata": {"labels": workload["selector"]}, "spec": {"containers": []}}},
                        "status": {"replicas": 2, "readyReplicas": 2}}, indent=4) + "\n"
            raise Failure('Error from server (NotFound): %ss.apps "%s" not found\n' % (kind, name))
        if kind == "events":
            self.authorize(user, "list", "events", namespace)
            selector = dict(part.split("=") for part in rest[rest.index("--field-selector") + 1].split(","))
            pod = self.pod(namespace, selector["involvedObject.name"])
            return json.dumps({"apiVersion": "v1", "kind": "List", "items": self.events(pod)}, indent=4) + "\n"
        raise Failure('error: the server doesn\'t have a resource type "%s"\n' % kind)

    def debug(self, args, user, namespace):
        separator = args.index("--")
        options, command = args[:separator], args[separator + 1:]
        target = options[0].split("/")[-1]
        value = lambda flag: options[options.index(flag) + 1]
        self.authorize(user, "get", "pods", namespace, target)
        pod = self.pod(namespace, target)
        if not self.server["ephemeral_containers"]:
            raise Failure('error: ephemeral containers are disabled for this cluster (error from server: "the '
                          'server could not find the requested resource").\n')
        self.authorize(user, "patch", "pods/ephemeralcontainers", namespace, target)
        with open(value("--custom")) as f:
            custom = json.load(f)
        name = value("--container")
        added = set(custom.get("securityContext", {}).get("capabilities", {}).get("add", []))
        added |= {"SYS_PTRACE"} if value("--profile") == "general" else set()
        if self.state["namespaces"][namespace].get("pod_security") == "baseline" and added - BASELINE_CAPABILITIES:
            listed = ", ".join('"%s"' % c for c in sorted(added - BASELINE_CAPABILITIES))
            raise Failure('Error from server (Forbidden): pods "%s" is forbidden: violates PodSecurity '
                          '"baseline:latest": non-default capabilities (container "%s" must not include %s in '
                          'securityContext.capabilities.add)\n' % (target, name, listed))
        if value("--target") not in pod["containers"]:
            raise Failure('The Pod "%s" is invalid: spec.ephemeralContainers[0].targetContainerName: Not found: '
                          '"%s"\n' % (target, value("--target")))
        container = {"name": name, "image": value("--image"), "imagePullPolicy": value("--image-pull-policy"),
                     "command": command, "targetContainerName": value("--target"),
                     "terminationMessagePath": "/dev/termination-log", "resources": {}} | custom
        pod.setdefault("ephemeral", []).append(container)
        self.record({"ephemeral_container": container, "pod": target})
        if container["image"] in self.state["images"]:
            self.start_agent(pod, name, command, user)
        return ""

    def create(self, manifest, user, namespace):
        self.authorize(user, "create", "pods", namespace)
        self.check_namespace(namespace)
        name = manifest["metadata"]["name"]
        container = manifest["spec"]["containers"][0]
        self.counter += 1
        netns = "sysm-tl-%d-%d" % (os.getpid(), self.counter)
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        pod = {"name": name, "namespace": namespace, "labels": manifest["metadata"].get("labels", {}),
               "containers": ["agent"], "created": now(), "netns": netns, "own_agent": True,
               "image": container["image"], "restartPolicy": manifest["spec"].get("restartPolicy"),
               "activeDeadlineSeconds": manifest["spec"].get("activeDeadlineSeconds"), "manifest": manifest}
        self.state["pods"].append(pod)
        self.record({"created_pod": manifest})
        if container["image"] in self.state["images"]:
            self.start_agent(pod, "agent", container["command"], container["securityContext"]["runAsUser"],
                             root_netns=netns)
        return json.dumps(self.pod_object(pod), indent=4) + "\n"

    def delete(self, args, user, namespace):
        if args[0] == "pods" and "-l" in args:
            self.authorize(user, "list", "pods", namespace)
            selector = dict(part.split("=") for part in args[args.index("-l") + 1].split(","))
            gone = [p for p in self.state["pods"] if p["namespace"] == namespace and not p.get("deleted")
                    and selector.items() <= p.get("labels", {}).items()
                    and self.pod_object(p)["status"]["phase"] not in ("Running", "Pending")]
        else:
            try:
                gone = [self.pod(namespace, args[1])]
            except Failure:
                if "--ignore-not-found" in args:
                    return ""
                raise
        out = ""
        for pod in gone:
            self.authorize(user, "delete", "pods", namespace, pod["name"])
            pod["deleted"] = True
            agent = self.agents.get((namespace, pod["name"], "agent"))
            if agent and agent[0].poll() is None:
                agent[0].kill()
                agent[0].wait()
            if pod.get("own_agent"):
                subprocess.run(["ip", "netns", "delete", pod["netns"]], stderr=subprocess.DEVNULL)
            self.record({"deleted_pod": pod["name"]})
            out += 'pod "%s" deleted\n' % pod["name"]
        return out

    def open_stream(self, namespace, pod_name, port):
        """The kubelet's end of a port-forward stream: a connection to 127.0.0.1:port in the pod's netns."""
        with self.lock:
            pod = self.pod(namespace, pod_name)
        fd = os.open("/var/run/netns/" + pod["netns"], os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        return socket.create_connection(("127.0.0.1", port), timeout=5)


def serve(state_path, socket_path, log_path):
    cluster = Cluster(state_path, log_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(socket_path)
    os.chmod(socket_path, 0o666)
    server.listen(64)

    def stop(*_):
        cluster.stop_all()
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def session(connection):
        reader = connection.makefile("rb")
        request = json.loads(reader.readline())
        if "stream" in request:  # on a thread of its own: setns moves only this thread
            target = request["stream"]
            try:
                upstream = cluster.open_stream(target["namespace"], target["pod"], target["port"])
                upstream.settimeout(None)
            except (OSError, Failure) as error:
                connection.sendall((json.dumps({"error": str(error)}) + "\n").encode())
                connection.close()
                return
            connection.sendall(b'{"ok": true}\n')
            relay(connection, upstream)
            return
        if "forwarding" in request:
            cluster.record(request)
            connection.close()
            return
        try:
            answer = {"stdout": cluster.handle(request["argv"], request["env"], request.get("stdin")), "stderr": "",
                      "status": 0}
        except Failure as failure:
            answer = {"stdout": "", "stderr": failure.stderr, "status": failure.status}
        connection.sendall((json.dumps(answer) + "\n").encode())
        connection.close()

    while True:
        connection, _ = server.accept()
        threading.Thread(target=session, args=(connection,), daemon=True).start()


def client(argv):
    socket_path = os.path.join(os.path.dirname(os.path.realpath(__file__)), SOCKET_NAME)

    def ask(request):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(socket_path)
        connection.sendall((json.dumps(request) + "\n").encode())
        return connection

    stdin = sys.stdin.read() if "-f" in argv and argv[argv.index("-f") + 1] == "-" else None
    env = {k: os.environ[k] for k in ("KUBECONFIG", "HOME") if k in os.environ}
    connection = ask({"argv": argv, "env": env, "stdin": stdin})
    answer = json.loads(connection.makefile("rb").readline())
    connection.close()
    if answer["status"] != 0 or "forward" not in answer["stdout"]:
        sys.stdout.write(answer["stdout"])
        sys.stderr.write(answer["stderr"])
        sys.exit(answer["status"])
    target = json.loads(answer["stdout"])["forward"]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    local = listener.getsockname()[1]
    ask({"forwarding": {"pid": os.getpid(), "local": local} | target}).close()
    print("Forwarding from 127.0.0.1:%d -> %d" % (local, target["port"]), flush=True)

    def forward(connection):
        print("Handling connection for %d" % local, flush=True)
        stream = ask({"stream": target})
        reader = stream.makefile("rb")
        reply = json.loads(reader.readline())
        if "error" in reply:
            sys.stderr.write(
                'E1127 05:20:02.000000   23456 portforward.go:424] "Unhandled Error" err="an error occurred forwarding '
                '%d -> %d: error forwarding port %d to pod %s, uid : failed to execute portforward in network namespace '
                '\\"/var/run/netns/cni-0\\": failed to connect to localhost:%d inside namespace: %s"\n'
                % (local, target["port"], target["port"], target["pod"], target["port"], reply["error"]))
            sys.stderr.flush()
            connection.close()
            stream.close()
            return
        relay(connection, stream)

    while True:
        connection, _ = listener.accept()
        threading.Thread(target=forward, args=(connection,), daemon=True).start()


if __name__ == "__main__":
    if os.path.basename(sys.argv[0]) == "kubectl":
        client(sys.argv[1:])
    else:
        serve(*sys.argv[2:5])
