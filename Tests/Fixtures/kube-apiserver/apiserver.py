#!/usr/bin/env python3
"""A Kubernetes API server and kubelet double that the real kubectl (1.32) talks to.

There is no cluster on the test machines. `apiserver.py serve STATE_JSON CALLS_LOG READY_JSON`, run as root,
serves each cluster named in the state over HTTPS on 127.0.0.1 (its own CA, made at start) and answers the
requests kubectl sends for the commands sysmirror runs, with the objects, Status errors and discovery
documents a 1.32 API server gives:

- discovery: /version, /api, /apis (aggregated discovery v2 when asked, the older documents otherwise),
  /api/v1, /apis/apps/v1, /apis/authorization.k8s.io/v1, and /openapi/v3 as far as `kubectl create` looks
  (to learn that the server validates fields itself);
- bearer tokens (401 otherwise), rules that forbid a verb on a resource or subresource (403, in RBAC's
  words), SelfSubjectAccessReviews judged by the same rules;
- namespaces (get), pods (get, list with label and field selectors, create, delete), deployments and
  statefulsets (get), events (list with field selectors), the ephemeralcontainers subresource (get, and
  the strategic-merge PATCH kubectl debug sends), Pod Security "baseline" namespaces, and pods/portforward,
  which portforward.py (beside this file) serves over WebSocket or SPDY.

Its kubelet starts the real agent for an ephemeral container, in the pod stand-in's network namespace and
its container's process namespace (where the container's main process is PID 1), and for a created pod in
a network namespace of its own as the pod's user; it reports container states and the event sequences a
kubelet reports (image present, or a pull that fails and backs off). Every request and what the kubelet
did is appended to CALLS_LOG, one JSON object a line.

STATE_JSON: "clusters" {NAME: {"ephemeral_containers", "version", "portforward": {"websocket", "idle_timeout",
"half_close_linger"}}}, "tokens" {TOKEN: USER}, "forbid" {USER: [[VERB, RESOURCE, SUBRESOURCE?], ...]},
"namespaces" {NAME: {"pod_security": "baseline"?}}, "images" {IMAGE: {"start_seconds",
"listen_delay_seconds"}} (the images the node has; any other fails to pull), "agent_binary", "pods" [{"name",
"namespace", "labels", "annotations", "created", "containers" [NAME], "ready", "phase", "owner" {"kind",
"name"}, "shareProcessNamespace", "restartPolicy", "netns", "pid"}], "deployments" and "statefulsets"
[{"name", "namespace", "selector", "replicas"}].
READY_JSON, written once every cluster listens: {"ca": CA_FILE, "servers": {NAME: "https://127.0.0.1:PORT"},
"control": SOCKET}.

SOCKET (control.sock beside STATE_JSON, root's only) changes the cluster as its controllers would, for tests: a
connection sends one JSON object on a line and gets {"ok": true} or {"error": MESSAGE} back.
  {"add_pod": POD}  a new pod stand-in (POD as in "pods"; "created" defaults to now), Running from the start;
  {"delete_pod": {"namespace", "name", "terminating_seconds"}}  a controller's graceful deletion, answered once
      it has begun: the pod shows deletionTimestamp (its 30 s grace), its kubelet sends SIGTERM to the agents it
      started there and starts no more, and `terminating_seconds` later the pod is gone (404), what still runs
      of it killed, and new port-forward streams to it fail as for a removed sandbox. The calls log records
      {"terminating_pod": NAME} and then {"removed_pod": NAME}.

Known infidelities: no watch, no Table output (kubectl's human `get` output differs; -o json/name/yaml do
not), no server-side apply, no field validation of bodies (unknown fields are kept, not refused), only the
pod field selectors listed in POD_FIELDS, only the capability and privileged checks of Pod Security
"baseline", forbid rules instead of RBAC objects (an allowed access review gives no reason), a request
without a token is refused as Unauthorized (a real server calls it system:anonymous), one node, one pod IP
for all the state's pods, image pulls that fail at once with NotFound for any image not listed as present, the
kubelet's back-off steps (10 s doubling to 300 s) without its jitter, and a controller's deletion (SOCKET) that
removes the pod after a set time rather than once its containers have stopped. HTTP/1.1 only (no HTTP/2).
"""
import ctypes
import datetime
import http.server
import itertools
import json
import os
import queue
import re
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
import uuid

import portforward

SERVER_VERSION = "v1.32.4"
NODE = "node-1"
CLONE_NEWNET = 0x40000000
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
# The pod fields a real API server filters on; any other is a BadRequest.
POD_FIELDS = {"metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
              "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"}
EVENT_FIELDS = {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                "reportingComponent", "source", "type", "metadata.name", "metadata.namespace"}
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
PULL_SECONDS = 0.3  # how long a failing pull takes
SYNC_SECONDS = 1.0  # the kubelet's next look at a pod whose pull failed
LOG_TAIL_LINES, LOG_TAIL_BYTES = 80, 2048  # FallbackToLogsOnError's share of the log


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_uid(namespace, name):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "pod/%s/%s" % (namespace, name)))


def ending(pod):
    """Whether the pod is being deleted or is gone: its kubelet starts nothing more in it."""
    return bool(pod.get("deletionTimestamp") or pod.get("gone"))


class ApiError(Exception):
    """A request's failure, answered as the Status object a real API server sends."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason}
        if details is not None:
            self.status["details"] = details
        self.status["code"] = code

    @classmethod
    def not_found(cls, resource, name, group=""):
        qualified = resource + ("." + group if group else "")
        return cls(404, "NotFound", '%s "%s" not found' % (qualified, name), details(name, group, resource))

    @classmethod
    def no_route(cls):
        """What the API server says for a path it has no handler for (also a disabled subresource)."""
        return cls(404, "NotFound", "the server could not find the requested resource", {})

    @classmethod
    def bad_request(cls, message):
        return cls(400, "BadRequest", message)


def details(name, group, kind, **more):
    result = {"name": name} if name else {}
    if group:
        result["group"] = group
    result["kind"] = kind
    return result | more


def image_reference(image):
    """The image as containerd names it in its errors: registry host and tag filled in."""
    name, tag = image, ""
    if "@" not in image and ":" not in image.rsplit("/", 1)[-1]:
        tag = ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = "docker.io/" + ("library/" if "/" not in name else "") + name
    return name + tag


# ---- selectors ----

def split_terms(text):
    """A selector's comma-separated terms; commas inside `in (...)` do not split."""
    terms, depth, current = [], 0, ""
    for character in text:
        if character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
        if character == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += character
    if current.strip():
        terms.append(current.strip())
    return terms


def label_matcher(selector):
    """A predicate on a labels dict, for kubectl's -l syntax (=, ==, !=, in, notin, exists, !exists)."""
    tests = []
    for term in split_terms(selector or ""):
        match = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if match:
            key, operator, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if operator == "in":
                tests.append(lambda labels, k=key, v=values: labels.get(k) in v)
            else:
                tests.append(lambda labels, k=key, v=values: labels.get(k) not in v)
            continue
        match = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term)
        if match:
            key, operator, value = match.groups()
            if operator == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        match = re.fullmatch(r"(!?)([\w./-]+)", term)
        if not match:
            raise ApiError.bad_request("unable to parse requirement: found '%s', expected: identifier" % term)
        negated, key = match.groups()
        tests.append(lambda labels, k=key, n=bool(negated): (k in labels) != n)
    return lambda labels: all(test(labels) for test in tests)


def field_matcher(selector, supported, kind):
    """A predicate on an object for a field selector (=, ==, !=) over the fields the real server indexes."""
    tests = []
    for term in split_terms(selector or ""):
        match = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if not match:
            raise ApiError.bad_request("invalid selector: '%s'; can't understand '%s'" % (selector, term))
        field, operator, value = match.groups()
        if field not in supported:
            raise ApiError.bad_request('"%s" is not a known field selector: only "%s"' % (
                field, '", "'.join(sorted(supported))) if kind == "events" else
                "field label not supported: %s" % field)

        def value_of(item, path=field):
            if path == "source":
                return item.get("source", {}).get("component", "")
            for part in path.split("."):
                item = item.get(part) if isinstance(item, dict) else None
            return "" if item is None else str(item).lower() if isinstance(item, bool) else str(item)
        if operator == "!=":
            tests.append(lambda item, f=value_of, v=value: f(item) != v)
        else:
            tests.append(lambda item, f=value_of, v=value: f(item) == v)
    return lambda item: all(test(item) for test in tests)


# ---- the cluster ----

class Cluster:
    """The objects every served cluster shares, the kubelet's containers, and the calls log."""

    def __init__(self, state_path, log_path):
        with open(state_path) as f:
            self.state = json.load(f)
        self.directory = os.path.dirname(os.path.abspath(log_path))
        self.log_path = log_path
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.revision = 1000
        self.events = []
        self.agents = []  # Popen of every agent started, for the end
        self.created_netns = []
        self.netns_numbers = itertools.count(1)
        self.forwarders = set()  # pids of the kubectl port-forwards recorded
        self.namespaces = self.state.get("namespaces", {"default": {}})
        for pod in self.state.get("pods", []):
            self.admit(pod)

    def admit(self, pod):
        """A stand-in pod of the state or of a control request, with what the API server adds."""
        pod.setdefault("uid", pod_uid(pod["namespace"], pod["name"]))
        pod.setdefault("created", now())
        pod.setdefault("ephemeral", [])
        pod.setdefault("statuses", {})
        pod["resourceVersion"] = self.next_revision()

    def next_revision(self):
        with self.lock:
            self.revision += 1
            return str(self.revision)

    def record(self, entry):
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    # ---- authentication and authorisation ----

    def user(self, authorization):
        """The user a bearer token names; None when the token is missing or unknown."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        return self.state.get("tokens", {}).get(authorization[len("Bearer "):].strip())

    def allowed(self, user, verb, resource, subresource=""):
        return [verb, resource, subresource] not in [
            (rule + [""])[:3] for rule in self.state.get("forbid", {}).get(user, [])]

    def authorize(self, user, verb, resource, namespace, name="", group="", subresource=""):
        """Raises the 403 an RBAC authorizer's refusal becomes."""
        if self.allowed(user, verb, resource, subresource):
            return
        full = resource + ("/" + subresource if subresource else "")
        qualified = resource + ("." + group if group else "")
        subject = '%s "%s"' % (qualified, name) if name else qualified
        scope = ' in the namespace "%s"' % namespace if namespace else " at the cluster scope"
        raise ApiError(403, "Forbidden", '%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s"%s' % (
            subject, user, verb, full, group, scope), details(name, group, resource))

    # ---- objects ----

    def pod(self, namespace, name):
        for pod in self.state.get("pods", []):
            if pod["namespace"] == namespace and pod["name"] == name and not pod.get("gone"):
                return pod
        raise ApiError.not_found("pods", name)

    def pods(self, namespace):
        return [p for p in self.state.get("pods", []) if p["namespace"] == namespace and not p.get("gone")]

    def namespace_object(self, name):
        if name not in self.namespaces:
            raise ApiError.not_found("namespaces", name)
        labels = {"kubernetes.io/metadata.name": name}
        if self.namespaces[name].get("pod_security"):
            labels["pod-security.kubernetes.io/enforce"] = self.namespaces[name]["pod_security"]
        return {"kind": "Namespace", "apiVersion": "v1",
                "metadata": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, "namespace/" + name)),
                             "resourceVersion": "17", "creationTimestamp": "2026-11-20T08:00:00Z", "labels": labels},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}

    def workload_object(self, kind, namespace, name):
        resource = kind.lower() + "s"
        for workload in self.state.get(resource, []):
            if workload["namespace"] == namespace and workload["name"] == name:
                break
        else:
            raise ApiError.not_found(resource, name, "apps")
        replicas = workload.get("replicas", 2)
        template = {"metadata": {"labels": workload["selector"]},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.4.2"}]}}
        spec = {"replicas": replicas, "selector": {"matchLabels": workload["selector"]}, "template": template}
        if kind == "StatefulSet":
            spec["serviceName"] = name
        return {"kind": kind, "apiVersion": "apps/v1",
                "metadata": {"name": name, "namespace": namespace,
                             "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, "%s/%s/%s" % (kind, namespace, name))),
                             "resourceVersion": "420", "generation": 3, "creationTimestamp": "2026-11-20T09:00:00Z"},
                "spec": spec,
                "status": {"observedGeneration": 3, "replicas": replicas, "readyReplicas": replicas,
                           "availableReplicas": replicas, "updatedReplicas": replicas}}

    def pod_object(self, pod):
        """The pod as the API shows it: its spec and the status its kubelet reported."""
        with self.lock:
            if pod.get("manifest"):
                return self.created_pod_object(pod)
            return self.standin_pod_object(pod)

    def standin_pod_object(self, pod):
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
                "name": name, "state": state, "lastState": {}, "ready": running, "restartCount": 0 if running else 7,
                "image": "registry.example/%s:1.4.2" % name,
                "imageID": "registry.example/%s@sha256:%s" % (name, "0" * 64),
                "containerID": "containerd://" + uuid.uuid5(uuid.NAMESPACE_URL, pod["uid"] + name).hex * 2,
                "started": running})
        phase = pod.get("phase", "Running")
        conditions = [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": pod["created"]}
                      for t in ("PodReadyToStartContainers", "Initialized")]
        for t in ("Ready", "ContainersReady"):
            condition = {"type": t, "status": "True" if ready and phase == "Running" else "False",
                         "lastProbeTime": None, "lastTransitionTime": pod["created"]}
            if not ready:
                condition |= {"reason": "ContainersNotReady",
                              "message": "containers with unready status: [%s]" % pod["containers"][0]}
            conditions.append(condition)
        conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                           "lastTransitionTime": pod["created"]})
        metadata = self.pod_metadata(pod)
        owner = pod.get("owner")
        if owner:
            metadata["ownerReferences"] = [{
                "apiVersion": "apps/v1", "kind": owner["kind"], "name": owner["name"],
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, "owner/" + owner["name"])), "controller": True,
                "blockOwnerDeletion": True}]
        spec = {"containers": containers, "restartPolicy": pod.get("restartPolicy", "Always"),
                "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst", "serviceAccountName": "default",
                "serviceAccount": "default", "nodeName": NODE, "securityContext": {},
                "schedulerName": "default-scheduler", "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
                "priority": 0}
        if pod.get("shareProcessNamespace"):
            spec["shareProcessNamespace"] = True
        if pod["ephemeral"]:
            spec["ephemeralContainers"] = pod["ephemeral"]
        status = {"phase": phase, "conditions": conditions, "hostIP": "10.0.0.5", "hostIPs": [{"ip": "10.0.0.5"}],
                  "podIP": "10.244.1.17", "podIPs": [{"ip": "10.244.1.17"}], "startTime": pod["created"],
                  "containerStatuses": container_statuses, "qosClass": "BestEffort"}
        statuses = [self.container_status(pod, c) for c in pod["ephemeral"] if c["name"] in pod["statuses"]]
        if statuses:
            status["ephemeralContainerStatuses"] = statuses
        return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}

    def pod_metadata(self, pod):
        metadata = {"name": pod["name"], "namespace": pod["namespace"], "uid": pod["uid"],
                    "resourceVersion": pod["resourceVersion"], "creationTimestamp": pod["created"]}
        if pod.get("labels"):
            metadata["labels"] = pod["labels"]
        if pod.get("annotations"):
            metadata["annotations"] = pod["annotations"]
        if pod.get("deletionTimestamp"):
            metadata["deletionTimestamp"] = pod["deletionTimestamp"]
            metadata["deletionGracePeriodSeconds"] = pod["deletionGracePeriodSeconds"]
        return metadata

    def created_pod_object(self, pod):
        manifest = pod["manifest"]
        metadata = self.pod_metadata(pod)
        spec = manifest["spec"]
        status = {"phase": "Pending", "qosClass": "BestEffort"}
        if pod.get("scheduled"):
            status["conditions"] = [{"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                                     "lastTransitionTime": pod["scheduled"]}]
        container = spec["containers"][0]
        record = pod["statuses"].get(container["name"])
        if record is not None:
            container_status = self.container_status(pod, container)
            state = container_status["state"]
            status["phase"] = ("Running" if "running" in state else "Pending" if "waiting" in state else
                               "Succeeded" if state["terminated"]["exitCode"] == 0 else "Failed")
            container_status["ready"] = status["phase"] == "Running"
            container_status["started"] = status["phase"] == "Running"
            ready = {"status": "True"} if status["phase"] == "Running" else \
                {"status": "False", "reason": "PodCompleted"} if "terminated" in state else \
                {"status": "False", "reason": "ContainersNotReady",
                 "message": "containers with unready status: [%s]" % container["name"]}
            since = {"lastProbeTime": None, "lastTransitionTime": pod["scheduled"]}
            status["conditions"] = [
                {"type": "PodReadyToStartContainers", "status": "True"} | since,
                {"type": "Initialized", "status": "True"} | since,
                {"type": "Ready"} | ready | since | {"lastTransitionTime": record["since"]},
                {"type": "ContainersReady"} | ready | since | {"lastTransitionTime": record["since"]},
            ] + status["conditions"]
            status |= {"hostIP": "10.0.0.5", "hostIPs": [{"ip": "10.0.0.5"}], "podIP": pod["podIP"],
                       "podIPs": [{"ip": pod["podIP"]}], "startTime": pod["scheduled"],
                       "containerStatuses": [container_status]}
        return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}

    def container_status(self, pod, container):
        """A container's status from its kubelet record; a started agent's exit ends it."""
        record = pod["statuses"][container["name"]]
        base = {"name": container["name"], "state": record["state"], "lastState": {}, "ready": False,
                "restartCount": 0, "image": container["image"], "imageID": record.get("imageID", "")}
        if record.get("containerID"):
            base["containerID"] = record["containerID"]
        process = record.get("process")
        if process is not None and process.poll() is not None and "terminated" not in record["state"]:
            record["state"] = {"terminated": self.termination(process, record, container)}
            record["since"] = now()
            pod["resourceVersion"] = self.next_revision()
            base["state"] = record["state"]
        return base

    @staticmethod
    def termination(process, record, container):
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        state = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                 "startedAt": record["state"]["running"]["startedAt"], "finishedAt": now(),
                 "containerID": record["containerID"]}
        if code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with open(record["log"], "rb") as f:
                tail = b"".join(f.readlines()[-LOG_TAIL_LINES:])[-LOG_TAIL_BYTES:]
            if tail:
                state["message"] = tail.decode(errors="replace")
        return state

    # ---- events ----

    def emit(self, pod, field_path, kind, reason, message, component="kubelet"):
        """Records an event as a kubelet's recorder does: the same event again only counts up."""
        with self.lock:
            timestamp = now()
            for event in self.events:
                if (event["involvedObject"]["uid"], event["involvedObject"].get("fieldPath"), event["type"],
                        event["reason"], event["message"]) == (pod["uid"], field_path, kind, reason, message):
                    event["count"] += 1
                    event["lastTimestamp"] = timestamp
                    event["metadata"]["resourceVersion"] = self.next_revision()
                    return
            involved = {"kind": "Pod", "namespace": pod["namespace"], "name": pod["name"], "uid": pod["uid"],
                        "apiVersion": "v1", "resourceVersion": pod["resourceVersion"]}
            if field_path:
                involved["fieldPath"] = field_path
            event = {"metadata": {"name": "%s.%x" % (pod["name"], time.time_ns()), "namespace": pod["namespace"],
                                  "uid": str(uuid.uuid4()), "resourceVersion": self.next_revision(),
                                  "creationTimestamp": timestamp},
                     "involvedObject": involved, "reason": reason, "message": message}
            if component == "kubelet":  # the core/v1 recorder
                event |= {"source": {"component": component, "host": NODE}, "firstTimestamp": timestamp,
                          "lastTimestamp": timestamp, "count": 1, "type": kind, "eventTime": None,
                          "reportingComponent": component, "reportingInstance": NODE}
            else:  # the scheduler writes events.k8s.io/v1 events, which core/v1 shows this way
                event |= {"source": {}, "firstTimestamp": None, "lastTimestamp": None, "type": kind,
                          "eventTime": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                          "action": "Binding", "reportingComponent": component,
                          "reportingInstance": "%s-%s" % (component, "control-plane")}
            self.events.append(event)

    # ---- the kubelet's part ----

    def run_container(self, pod, container, field_path, start_prefix):
        """A kubelet's handling of one new container, on a thread of its own: pull (or find) the image,
        create and start it, and report each step as its status and events."""
        name, image = container["name"], container["image"]
        options = self.state.get("images", {}).get(image)

        def update(state, **fields):
            with self.lock:
                pod["statuses"][name] = pod["statuses"].get(name, {}) | {"state": state, "since": now()} | fields
                pod["resourceVersion"] = self.next_revision()

        if options is None:
            self.fail_pulls(pod, image, field_path, update)
            return
        update({"waiting": {"reason": "ContainerCreating"}})
        self.emit(pod, field_path, "Normal", "Pulled", 'Container image "%s" already present on machine' % image)
        if self.stopping.wait(options.get("start_seconds", 0)) or ending(pod):
            return
        container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
        self.emit(pod, field_path, "Normal", "Created", "Created container: %s" % name)
        self.emit(pod, field_path, "Normal", "Started", "Started container %s" % name)
        update({"running": {"startedAt": now()}}, containerID=container_id,
               imageID="%s@sha256:%s" % (image_reference(image).rsplit(":", 1)[0], uuid.uuid4().hex * 2))
        if self.stopping.wait(options.get("listen_delay_seconds", 0)) or ending(pod):
            return
        self.start_agent(pod, container, start_prefix)

    def fail_pulls(self, pod, image, field_path, update):
        """A pull that fails NotFound, then the kubelet's back-off, until the pod goes or the server ends."""
        reference = image_reference(image)
        error = ('rpc error: code = NotFound desc = failed to pull and unpack image "%s": failed to resolve '
                 'reference "%s": %s: not found' % (reference, reference, reference))
        update({"waiting": {"reason": "ContainerCreating"}})
        backoff = 10.0
        while True:
            self.emit(pod, field_path, "Normal", "Pulling", 'Pulling image "%s"' % image)
            if self.stopping.wait(PULL_SECONDS) or ending(pod):
                return
            self.emit(pod, field_path, "Warning", "Failed", 'Failed to pull image "%s": %s' % (image, error))
            self.emit(pod, field_path, "Warning", "Failed", "Error: ErrImagePull")
            update({"waiting": {"reason": "ErrImagePull", "message": error}})
            if self.stopping.wait(SYNC_SECONDS) or ending(pod):
                return
            self.emit(pod, field_path, "Normal", "BackOff", 'Back-off pulling image "%s"' % image)
            self.emit(pod, field_path, "Warning", "Failed", "Error: ImagePullBackOff")
            update({"waiting": {"reason": "ImagePullBackOff",
                                "message": 'Back-off pulling image "%s": ErrImagePull: %s' % (image, error)}})
            if self.stopping.wait(backoff - SYNC_SECONDS) or ending(pod):
                return
            backoff = min(backoff * 2, 300.0)

    def start_agent(self, pod, container, prefix):
        """Runs the agent binary as the container's process; its output is the container's log."""
        name = container["name"]
        command = container.get("command", []) + container.get("args", [])
        log = os.path.join(self.directory, "agent-%s-%s.log" % (pod["name"], name))
        with self.lock:
            if self.stopping.is_set() or ending(pod):
                return
            with open(log, "w") as out:
                process = subprocess.Popen(prefix + [self.state["agent_binary"]] + command[1:],
                                           stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            self.agents.append(process)
            pod["statuses"][name] |= {"process": process, "log": log}
        self.record({"started_agent": name, "pod": pod["name"], "pid": process.pid, "command": command})

    def add_ephemeral(self, pod, container):
        pod["ephemeral"].append(container)
        prefix = ["ip", "netns", "exec", pod["netns"], "nsenter", "-t", str(pod["pid"]), "--pid", "--",
                  "unshare", "--mount", "--mount-proc", "--"]
        threading.Thread(target=self.run_container, daemon=True, args=(
            pod, container, "spec.ephemeralContainers{%s}" % container["name"], prefix)).start()

    def schedule(self, pod):
        """The scheduler's binding and the kubelet's start of a created pod, in a network namespace of its own."""
        if self.stopping.wait(0.05) or ending(pod):
            return
        with self.lock:
            pod["scheduled"] = now()
            pod["manifest"]["spec"]["nodeName"] = NODE
            pod["resourceVersion"] = self.next_revision()
        self.emit(pod, None, "Normal", "Scheduled", "Successfully assigned %s/%s to %s" % (
            pod["namespace"], pod["name"], NODE), component="default-scheduler")
        container = pod["manifest"]["spec"]["containers"][0]
        user = (container.get("securityContext") or {}).get("runAsUser", 0)
        prefix = ["ip", "netns", "exec", pod["netns"], "setpriv", "--reuid=%d" % user, "--regid=%d" % user,
                  "--clear-groups", "--"]
        self.run_container(pod, container, "spec.containers{%s}" % container["name"], prefix)

    def stop_pod(self, pod):
        """The kubelet's end of a deleted pod: its agents stopped, its own network namespace removed."""
        pod["gone"] = True
        for record in pod["statuses"].values():
            process = record.get("process")
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if pod.get("manifest"):
            subprocess.run(["ip", "netns", "delete", pod["netns"]], stderr=subprocess.DEVNULL)
            self.created_netns.remove(pod["netns"])

    def add_pod(self, pod):
        """A pod a controller created (a rollout's new pod), already scheduled and running."""
        with self.lock:
            if pod["namespace"] not in self.namespaces:
                raise ApiError.not_found("namespaces", pod["namespace"])
            if any(p["name"] == pod["name"] for p in self.pods(pod["namespace"])):
                raise ApiError(409, "AlreadyExists", 'pods "%s" already exists' % pod["name"],
                               details(pod["name"], "", "pods"))
            self.admit(pod)
            self.state["pods"].append(pod)
        self.record({"added_pod": pod["name"]})

    def terminate(self, namespace, name, seconds):
        """A controller's graceful deletion of a stand-in pod: Terminating at once (the API server sets
        deletionTimestamp to the end of the spec's grace period), its kubelet stopping the containers (SIGTERM
        to the agents; the stand-in's own container is the test's to stop), and the pod gone `seconds` later."""
        with self.lock:
            pod = self.pod(namespace, name)
            grace = 30  # standin_pod_object's terminationGracePeriodSeconds
            pod["deletionTimestamp"] = datetime.datetime.fromtimestamp(
                time.time() + grace, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            pod["deletionGracePeriodSeconds"] = grace
            pod["resourceVersion"] = self.next_revision()
            for container in pod["containers"]:
                self.emit(pod, "spec.containers{%s}" % container, "Normal", "Killing", "Stopping container " + container)
            for container in pod["ephemeral"]:
                record = pod["statuses"].get(container["name"], {})
                if "running" in record.get("state", {}):
                    self.emit(pod, "spec.ephemeralContainers{%s}" % container["name"], "Normal", "Killing",
                              "Stopping container " + container["name"])
                process = record.get("process")
                if process is not None and process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
        self.record({"terminating_pod": name})

        def remove():
            if self.stopping.wait(seconds):
                return
            with self.lock:
                self.stop_pod(pod)
            self.record({"removed_pod": name})
        threading.Thread(target=remove, daemon=True).start()

    def stop_all(self):
        self.stopping.set()
        with self.lock:
            for process in self.agents:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            for netns in self.created_netns:
                subprocess.run(["ip", "netns", "delete", netns], stderr=subprocess.DEVNULL)

    def dial(self, pod, port):
        """A connection to 127.0.0.1:port inside the pod's network namespace, made on a fresh thread (setns
        moves only the calling thread)."""
        if pod.get("gone"):
            raise portforward.SandboxGone()
        result = queue.Queue()

        def connect():
            try:
                fd = os.open("/var/run/netns/" + pod["netns"], os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                result.put(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError as error:
                result.put(error)
        threading.Thread(target=connect, daemon=True).start()
        answer = result.get()
        if isinstance(answer, OSError):
            raise answer
        answer.settimeout(None)
        return answer


# ---- discovery ----

def resource(name, kind, verbs, namespaced=True, short=(), singular=None, categories=(), subresources=()):
    return {"name": name, "kind": kind, "verbs": list(verbs), "namespaced": namespaced, "short": list(short),
            "singular": singular or kind.lower(), "categories": list(categories), "subresources": list(subresources)}


READ_WRITE = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


def api_groups(ephemeral_containers):
    """(group, version, resources) the served API has; the ephemeralcontainers subresource when enabled."""
    pod_subresources = [("attach", "PodAttachOptions", ("create", "get")), ("binding", "Binding", ("create",)),
                        ("eviction", "Eviction", ("create",)), ("exec", "PodExecOptions", ("create", "get")),
                        ("log", "Pod", ("get",)), ("portforward", "PodPortForwardOptions", ("create", "get")),
                        ("proxy", "PodProxyOptions", ("create", "delete", "get", "patch", "update")),
                        ("status", "Pod", ("get", "patch", "update"))]
    if ephemeral_containers:
        pod_subresources.insert(3, ("ephemeralcontainers", "Pod", ("get", "patch", "update")))
    core = [
        resource("events", "Event", READ_WRITE, short=("ev",)),
        resource("namespaces", "Namespace", ("create", "delete", "get", "list", "patch", "update", "watch"),
                 namespaced=False, short=("ns",), subresources=[("finalize", "Namespace", ("update",)),
                                                                ("status", "Namespace", ("get", "patch", "update"))]),
        resource("pods", "Pod", READ_WRITE, short=("po",), categories=("all",), subresources=pod_subresources),
    ]
    workload_subresources = [("scale", "Scale", ("get", "patch", "update")), ("status", None, ("get", "patch", "update"))]
    apps = [
        resource("deployments", "Deployment", READ_WRITE, short=("deploy",), categories=("all",),
                 subresources=workload_subresources),
        resource("statefulsets", "StatefulSet", READ_WRITE, short=("sts",), categories=("all",),
                 subresources=workload_subresources),
    ]
    authorization = [resource("selfsubjectaccessreviews", "SelfSubjectAccessReview", ("create",), namespaced=False)]
    return [("", "v1", core), ("apps", "v1", apps), ("authorization.k8s.io", "v1", authorization)]


def aggregated_discovery(groups):
    items = []
    for group, version, resources in groups:
        entries = []
        for r in resources:
            entry = {"resource": r["name"], "responseKind": {"group": "", "version": "", "kind": r["kind"]},
                     "scope": "Namespaced" if r["namespaced"] else "Cluster", "singularResource": r["singular"],
                     "verbs": r["verbs"]}
            if r["short"]:
                entry["shortNames"] = r["short"]
            if r["categories"]:
                entry["categories"] = r["categories"]
            if r["subresources"]:
                entry["subresources"] = [{"subresource": s, "responseKind": {"group": "", "version": "",
                                                                             "kind": k or r["kind"]}, "verbs": list(v)}
                                         for s, k, v in r["subresources"]]
            entries.append(entry)
        metadata = {"name": group, "creationTimestamp": None} if group else {"creationTimestamp": None}
        items.append({"metadata": metadata, "versions": [{"version": version, "resources": entries,
                                                          "freshness": "Current"}]})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}


def resource_list(group, version, resources):
    entries = []
    for r in resources:
        entry = {"name": r["name"], "singularName": r["singular"], "namespaced": r["namespaced"], "kind": r["kind"],
                 "verbs": r["verbs"]}
        if r["short"]:
            entry["shortNames"] = r["short"]
        if r["categories"]:
            entry["categories"] = r["categories"]
        entries.append(entry)
        for s, k, v in r["subresources"]:
            entries.append({"name": "%s/%s" % (r["name"], s), "singularName": "", "namespaced": r["namespaced"],
                            "kind": k or r["kind"], "verbs": list(v)})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "%s/%s" % (group, version) if group else version, "resources": entries}


def openapi_v3_index(groups):
    """The OpenAPI v3 index: kubectl looks up the group version of what it creates."""
    paths = {}
    for group, version, _ in groups:
        path = "apis/%s/%s" % (group, version) if group else "api/" + version
        paths[path] = {"serverRelativeURL": "/openapi/v3/%s?hash=%s" % (path, uuid.uuid5(uuid.NAMESPACE_URL, path).hex.upper())}
    return {"paths": paths}


def openapi_v3_document(group, version, resources):
    """Enough of a group version's OpenAPI v3 document for kubectl to see that the server validates fields
    itself (the PATCH of each object takes fieldValidation), so that it sends fieldValidation=Strict."""
    paths = {}
    prefix = "/apis/%s/%s" % (group, version) if group else "/api/" + version
    for r in resources:
        if "patch" not in r["verbs"]:
            continue
        kind = {"group": group, "version": version, "kind": r["kind"]}
        scope = "Namespaced" if r["namespaced"] else ""
        parameters = [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                      for n in ("dryRun", "fieldManager", "fieldValidation")]
        collection = prefix + ("/namespaces/{namespace}/" if r["namespaced"] else "/") + r["name"]
        tag = (group.split(".")[0] if group else "core") + "_" + version
        paths[collection] = {"post": {
            "tags": [tag], "operationId": "create%s%s" % (scope, r["kind"]), "parameters": parameters,
            "responses": {"201": {"description": "Created"}},
            "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": kind}}
        paths[collection + "/{name}"] = {"patch": {
            "tags": [tag], "operationId": "patch%s%s" % (scope, r["kind"]), "parameters": parameters,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": kind}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION}, "paths": paths,
            "components": {}}


# ---- HTTP ----

class Handler(http.server.BaseHTTPRequestHandler):
    """One kubectl connection: HTTP/1.1 with keep-alive, each request answered as the API server would."""
    protocol_version = "HTTP/1.1"
    cluster: Cluster
    name: str
    settings: dict

    def log_message(self, *_):
        pass

    def do_GET(self):
        self.serve("GET")

    def do_POST(self):
        self.serve("POST")

    def do_PATCH(self):
        self.serve("PATCH")

    def do_DELETE(self):
        self.serve("DELETE")

    def read_body(self):
        """kubectl always sends a Content-Length (Go does for a body it holds whole)."""
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def serve(self, method):
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", dict(urllib.parse.parse_qsl(url.query))
        user = self.cluster.user(self.headers.get("Authorization"))
        parts = path.strip("/").split("/")
        namespace = parts[3] if len(parts) > 3 and parts[2] == "namespaces" else \
            parts[4] if len(parts) > 4 and parts[3] == "namespaces" else None
        self.cluster.record({"user": user, "namespace": namespace, "request": "%s %s" % (method, path),
                             "cluster": self.name})
        try:
            if user is None:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods" \
                    and parts[6] == "portforward" and method in ("GET", "POST"):
                self.port_forward(method, user, parts[3], parts[5])
                return
            body = self.read_body() if method in ("POST", "PATCH", "DELETE") else b""
            code, answer, content_type = self.route(method, path, parts, query, user, body)
        except ApiError as error:
            code, answer, content_type = error.status["code"], error.status, "application/json"
        except Exception as error:  # a fault of the double: said to kubectl as the server would, and shown
            traceback.print_exc()
            failure = ApiError(500, "InternalError", "Internal error occurred: %s" % error,
                               {"causes": [{"message": str(error)}]})
            code, answer, content_type = 500, failure.status, "application/json"
        self.answer(code, answer, content_type)

    def answer(self, code, document, content_type="application/json"):
        data = json.dumps(document).encode() + b"\n"
        self.send_response_only(code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", content_type)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self, method, path, parts, query, user, body):
        cluster = self.cluster
        groups = api_groups(self.settings.get("ephemeral_containers", True))
        aggregated = "as=APIGroupDiscoveryList" in self.headers.get("Accept", "")
        if method == "GET" and path == "/version":
            return 200, self.version(), "application/json"
        if method == "GET" and path in ("/api", "/apis"):
            wanted = [g for g in groups if bool(g[0]) == (path == "/apis")]
            if aggregated:
                return 200, aggregated_discovery(wanted), AGGREGATED
            if path == "/api":
                return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]}, "application/json"
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": "%s/%s" % (g, v), "version": v}],
                 "preferredVersion": {"groupVersion": "%s/%s" % (g, v), "version": v}} for g, v, _ in wanted]}, \
                "application/json"
        for group, version, resources in groups:
            prefix = "/apis/%s/%s" % (group, version) if group else "/api/" + version
            if method == "GET" and path == prefix:
                return 200, resource_list(group, version, resources), "application/json"
            if method == "GET" and path == "/openapi/v3/" + prefix.lstrip("/"):
                return 200, openapi_v3_document(group, version, resources), "application/json"
        if method == "GET" and path == "/openapi/v3":
            return 200, openapi_v3_index(groups), "application/json"
        with cluster.lock:
            return self.objects(method, parts, query, user, body)

    def version(self):
        version = self.settings.get("version", SERVER_VERSION)
        return {"major": "1", "minor": version.split(".")[1], "gitVersion": version,
                "gitCommit": "9894294ef13a5b32803e3ca2c0d620a088cc84d1", "gitTreeState": "clean",
                "buildDate": "2025-04-22T16:00:56Z", "goVersion": "go1.23.8", "compiler": "gc",
                "platform": "linux/amd64"}

    def objects(self, method, parts, query, user, body):
        cluster = self.cluster
        ok = lambda document: (200, document, "application/json")  # noqa: E731
        match parts:
            case ["api", "v1", "namespaces", name] if method == "GET":
                cluster.authorize(user, "get", "namespaces", name, name)
                return ok(cluster.namespace_object(name))
            case ["api", "v1", "namespaces", namespace, "pods"] if method == "GET":
                cluster.authorize(user, "list", "pods", namespace)
                return ok(self.pod_list(namespace, query))
            case ["api", "v1", "namespaces", namespace, "pods"] if method == "POST":
                cluster.authorize(user, "create", "pods", namespace)
                return 201, self.create_pod(namespace, body), "application/json"
            case ["api", "v1", "namespaces", namespace, "pods", name] if method == "GET":
                cluster.authorize(user, "get", "pods", namespace, name)
                return ok(cluster.pod_object(cluster.pod(namespace, name)))
            case ["api", "v1", "namespaces", namespace, "pods", name] if method == "DELETE":
                cluster.authorize(user, "delete", "pods", namespace, name)
                return ok(self.delete_pod(namespace, name))
            case ["api", "v1", "namespaces", namespace, "pods", name, "ephemeralcontainers"] \
                    if self.settings.get("ephemeral_containers", True) and method in ("GET", "PATCH"):
                cluster.authorize(user, method.lower(), "pods", namespace, name, subresource="ephemeralcontainers")
                pod = cluster.pod(namespace, name)
                if method == "PATCH":
                    self.patch_ephemeral(pod, body)
                return ok(cluster.pod_object(pod))
            case ["api", "v1", "namespaces", namespace, "events"] if method == "GET":
                cluster.authorize(user, "list", "events", namespace)
                selected = field_matcher(query.get("fieldSelector"), EVENT_FIELDS, "events")
                items = [e for e in cluster.events if e["metadata"]["namespace"] == namespace and selected(e)]
                return ok({"kind": "EventList", "apiVersion": "v1",
                           "metadata": {"resourceVersion": str(cluster.revision)}, "items": items})
            case ["apis", "apps", "v1", "namespaces", namespace, ("deployments" | "statefulsets") as kind, name] \
                    if method == "GET":
                cluster.authorize(user, "get", kind, namespace, name, group="apps")
                return ok(cluster.workload_object("Deployment" if kind == "deployments" else "StatefulSet",
                                                  namespace, name))
            case ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] if method == "POST":
                return 201, self.access_review(user, body), "application/json"
        raise ApiError.no_route()

    def pod_list(self, namespace, query):
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(query.get("fieldSelector"), POD_FIELDS, "pods")
        items = []
        for pod in sorted(self.cluster.pods(namespace), key=lambda p: p["name"]):  # etcd's key order
            item = self.cluster.pod_object(pod)
            if labels(pod.get("labels") or {}) and fields(item):
                item.pop("kind")
                item.pop("apiVersion")
                items.append(item)
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.cluster.revision)},
                "items": items}

    def patch_ephemeral(self, pod, body):
        """The strategic merge patch kubectl debug sends: ephemeral containers merged by name, then the
        API server's defaults, validation and Pod Security admission."""
        if self.headers.get("Content-Type", "").split(";")[0] != "application/strategic-merge-patch+json":
            raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - '
                           'accepted media types include: application/json-patch+json, application/merge-patch+json, '
                           'application/apply-patch+yaml, application/strategic-merge-patch+json')
        patch = json.loads(body)
        existing = {c["name"]: c for c in pod["ephemeral"]}
        added = []
        for index, container in enumerate((patch.get("spec") or {}).get("ephemeralContainers") or []):
            if container.get("name") in existing:
                if {k: v for k, v in existing[container["name"]].items() if k in container} != container:
                    raise self.invalid(pod, "spec.ephemeralContainers", "FieldValueForbidden",
                                       "Forbidden: existing ephemeral containers %s may not be changed" %
                                       json.dumps(container["name"]))
                continue
            container = {"imagePullPolicy": "IfNotPresent", "resources": {},
                         "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"} | container
            target = container.get("targetContainerName")
            field = "spec.ephemeralContainers[%d]" % (len(pod["ephemeral"]) + index)
            if target and target not in pod["containers"]:
                raise self.invalid(pod, field + ".targetContainerName", "FieldValueNotFound",
                                   "Not found: %s" % json.dumps(target))
            added.append(container)
        self.pod_security(pod, added)
        for container in added:
            self.cluster.record({"ephemeral_container": container, "pod": pod["name"]})
            self.cluster.add_ephemeral(pod, container)
        if added:
            pod["resourceVersion"] = self.cluster.next_revision()

    @staticmethod
    def invalid(pod, field, reason, message):
        return ApiError(422, "Invalid", 'Pod "%s" is invalid: %s: %s' % (pod["name"], field, message),
                        details(pod["name"], "", "Pod", causes=[{"reason": reason, "message": message, "field": field}]))

    def pod_security(self, pod, containers):
        """Pod Security admission at "baseline": no privileged container, no capability beyond its list."""
        if self.cluster.namespaces.get(pod["namespace"], {}).get("pod_security") != "baseline":
            return
        violations, extra_holders, extra, privileged = [], [], set(), []
        for container in containers:
            security = container.get("securityContext") or {}
            if security.get("privileged"):
                privileged.append(container["name"])
            beyond = set((security.get("capabilities") or {}).get("add") or []) - BASELINE_CAPABILITIES
            if beyond:
                extra_holders.append(container["name"])
                extra |= beyond
        quote = lambda names: ", ".join(json.dumps(n) for n in names)  # noqa: E731
        plural = lambda names: "container" if len(names) == 1 else "containers"  # noqa: E731
        if extra:
            violations.append("non-default capabilities (%s %s must not include %s in securityContext.capabilities.add)"
                              % (plural(extra_holders), quote(extra_holders), quote(sorted(extra))))
        if privileged:
            violations.append("privileged (%s %s must not set securityContext.privileged=true)"
                              % (plural(privileged), quote(privileged)))
        if violations:
            raise ApiError(403, "Forbidden", 'pods "%s" is forbidden: violates PodSecurity "baseline:latest": %s'
                           % (pod["name"], ", ".join(sorted(violations))), details(pod["name"], "", "pods"))

    def create_pod(self, namespace, body):
        cluster = self.cluster
        manifest = json.loads(body)
        name = (manifest.get("metadata") or {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", 'Pod "" is invalid: metadata.name: Required value: name or generateName '
                           'is required', details("", "", "Pod", causes=[{"reason": "FieldValueRequired", "message":
                           "Required value: name or generateName is required", "field": "metadata.name"}]))
        if namespace not in cluster.namespaces:
            raise ApiError.not_found("namespaces", namespace)
        if any(p["name"] == name for p in cluster.pods(namespace)):
            raise ApiError(409, "AlreadyExists", 'pods "%s" already exists' % name, details(name, "", "pods"))
        spec = manifest["spec"]
        for container in spec["containers"]:
            for key, value in (("terminationMessagePath", "/dev/termination-log"), ("terminationMessagePolicy", "File"),
                               ("imagePullPolicy", "IfNotPresent"), ("resources", {})):
                container.setdefault(key, value)
        for key, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30),
                           ("dnsPolicy", "ClusterFirst"), ("securityContext", {}), ("schedulerName", "default-scheduler"),
                           ("serviceAccountName", "default"), ("serviceAccount", "default"), ("enableServiceLinks", True),
                           ("preemptionPolicy", "PreemptLowerPriority"), ("priority", 0)):
            spec.setdefault(key, value)
        spec.setdefault("tolerations", [
            {"key": "node.kubernetes.io/%s" % t, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            for t in ("not-ready", "unreachable")])
        pod = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "created": now(),
               "labels": manifest["metadata"].get("labels", {}), "annotations": manifest["metadata"].get("annotations"),
               "containers": [c["name"] for c in spec["containers"]], "ephemeral": [], "statuses": {},
               "manifest": manifest, "resourceVersion": cluster.next_revision(),
               "podIP": "10.244.1.%d" % (100 + len(cluster.state["pods"]) % 150)}
        manifest.setdefault("metadata", {})
        self.pod_security(pod, spec["containers"])
        pod["netns"] = "sysm-pod-%d-%d" % (os.getpid(), next(cluster.netns_numbers))
        subprocess.run(["ip", "netns", "add", pod["netns"]], check=True)
        cluster.created_netns.append(pod["netns"])
        subprocess.run(["ip", "-n", pod["netns"], "link", "set", "lo", "up"], check=True)
        cluster.state["pods"].append(pod)
        cluster.record({"created_pod": json.loads(body)})
        threading.Thread(target=cluster.schedule, args=(pod,), daemon=True).start()
        return cluster.pod_object(pod)

    def delete_pod(self, namespace, name):
        """Graceful deletion as the kubelet completes it at once: the answer shows the deletion under way."""
        cluster = self.cluster
        pod = cluster.pod(namespace, name)
        grace = (pod.get("manifest") or {}).get("spec", {}).get("terminationGracePeriodSeconds", 30)
        pod["deletionTimestamp"] = datetime.datetime.fromtimestamp(
            time.time() + grace, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        pod["deletionGracePeriodSeconds"] = grace
        pod["resourceVersion"] = cluster.next_revision()
        answer = cluster.pod_object(pod)
        cluster.stop_pod(pod)
        cluster.record({"deleted_pod": name})
        return answer

    def access_review(self, user, body):
        if self.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
            review = access_review_from_protobuf(body)
        else:
            review = json.loads(body)
        attributes = review.get("spec", {}).get("resourceAttributes")
        if attributes is not None:
            allowed = self.cluster.allowed(user, attributes.get("verb", ""), attributes.get("resource", ""),
                                           attributes.get("subresource", ""))
        else:
            allowed = True  # non-resource URLs: discovery and health, open to every user
        review["metadata"] = {"creationTimestamp": None}
        review["status"] = {"allowed": allowed}
        return review

    def port_forward(self, method, user, namespace, name):
        """pods/NAME/portforward: authorised as the request's verb (GET for WebSocket, POST for SPDY),
        then handed to portforward.py with the kubectl process on the other end recorded."""
        cluster = self.cluster
        try:
            cluster.authorize(user, "create" if method == "POST" else "get", "pods", namespace, name,
                              subresource="portforward")
            with cluster.lock:
                pod = cluster.pod(namespace, name)
        except ApiError as error:
            self.answer(error.status["code"], error.status)
            return
        settings = self.settings.get("portforward", {})
        options = portforward.Options()
        options.idle_timeout = settings.get("idle_timeout")
        options.websocket = settings.get("websocket", True)
        if "half_close_linger" in settings:
            options.half_close_linger = settings["half_close_linger"]
        pid = peer_process(self.connection)
        with cluster.lock:
            if pid not in cluster.forwarders:  # kubectl's WebSocket try and its SPDY fallback are one port-forward
                cluster.forwarders.add(pid)
                cluster.record({"forwarding": {"pid": pid, "pod": name, "namespace": namespace}})
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.close_connection = True
        if not portforward.handle_upgrade(self.connection, method, self.path, headers,
                                          lambda port: cluster.dial(pod, port), options, cluster.record):
            refusal = ApiError(400, "BadRequest", "Upgrade request required")
            self.answer(400, refusal.status)


def protobuf_fields(data):
    """The (number, value) fields of a protobuf message: ints for varints, bytes for the rest."""
    fields, position = [], 0

    def varint():
        nonlocal position
        value, shift = 0, 0
        while True:
            byte = data[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value
    while position < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.append((number, varint()))
        elif wire == 2:
            length = varint()
            fields.append((number, data[position:position + length]))
            position += length
        else:  # fixed 32 or 64 bits: not in the messages read here
            size = 4 if wire == 5 else 8
            fields.append((number, data[position:position + size]))
            position += size
    return fields


def access_review_from_protobuf(body):
    """A SelfSubjectAccessReview as kubectl auth can-i sends it (Kubernetes' protobuf envelope: "k8s\\0" and
    an Unknown whose field 2 is the object), as the JSON object it stands for."""
    if not body.startswith(b"k8s\x00"):
        raise ApiError.bad_request("the body of the request was in an unknown format")
    raw = dict(protobuf_fields(body[4:])).get(2, b"")
    spec = dict(protobuf_fields(dict(protobuf_fields(raw)).get(2, b"")))
    review = {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": {}}
    names = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource", 7: "name"}
    if 1 in spec:
        review["spec"]["resourceAttributes"] = {
            names[n]: v.decode() for n, v in protobuf_fields(spec[1]) if n in names and v}
    if 2 in spec:
        review["spec"]["nonResourceAttributes"] = {
            {1: "path", 2: "verb"}[n]: v.decode() for n, v in protobuf_fields(spec[2]) if n in (1, 2)}
    return review


def peer_process(connection):
    """The pid of the local process on the other end of a TCP connection: its port's socket inode in
    /proc/net/tcp, then the process holding that socket."""
    peer_host, peer_port = connection.getpeername()[:2]
    own_port = connection.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1].split(":"), fields[2].split(":")
            if int(local[1], 16) == peer_port and int(remote[1], 16) == own_port:
                inode = fields[9]
                break
    if inode is None:
        return None
    target = "socket:[%s]" % inode
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir("/proc/%s/fd" % pid):
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) == target:
                    return int(pid)
        except OSError:
            continue
    return None


class TLSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """One cluster's endpoint; the TLS handshake happens on the connection's own thread."""
    daemon_threads = True

    def __init__(self, context, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.context = context

    def get_request(self):
        connection, address = self.socket.accept()
        return self.context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request, client_address):
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def make_certificates(directory):
    """A CA and a server certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *curve, "-keyout", path("apiserver-ca.key"), "-out", path("apiserver-ca.crt"), "-days", "2",
        "-subj", "/CN=sysmirror-test-ca")
    run("req", *curve, "-keyout", path("apiserver.key"), "-out", path("apiserver.csr"), "-subj", "/CN=kube-apiserver")
    with open(path("apiserver.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n")
    run("x509", "-req", "-in", path("apiserver.csr"), "-CA", path("apiserver-ca.crt"), "-CAkey",
        path("apiserver-ca.key"), "-CAcreateserial", "-out", path("apiserver.crt"), "-days", "2",
        "-extfile", path("apiserver.ext"))
    return path("apiserver-ca.crt"), path("apiserver.crt"), path("apiserver.key")


class ControlHandler(socketserver.StreamRequestHandler):
    """One request on the control socket (the module's SOCKET): a JSON object on a line, answered on one."""
    cluster: Cluster

    def handle(self):
        try:
            request = json.loads(self.rfile.readline())
            if "add_pod" in request:
                self.cluster.add_pod(request["add_pod"])
            elif "delete_pod" in request:
                deletion = request["delete_pod"]
                self.cluster.terminate(deletion["namespace"], deletion["name"], deletion["terminating_seconds"])
            else:
                raise ValueError("unknown request: %s" % sorted(request))
            answer = {"ok": True}
        except ApiError as error:
            answer = {"error": error.status["message"]}
        except (ValueError, KeyError, TypeError) as error:
            answer = {"error": "%s: %s" % (type(error).__name__, error)}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


def serve_control(cluster, path):
    """The control socket, only root's, on a thread of its own."""
    server = socketserver.ThreadingUnixStreamServer(path, type("Control", (ControlHandler,), {"cluster": cluster}))
    server.daemon_threads = True
    os.chmod(path, 0o600)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def serve(state_path, log_path, ready_path):
    cluster = Cluster(state_path, log_path)
    ca, certificate, key = make_certificates(os.path.dirname(os.path.abspath(state_path)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    servers = {}
    for name, settings in cluster.state["clusters"].items():
        handler = type("Handler_" + re.sub(r"\W", "_", name), (Handler,),
                       {"cluster": cluster, "name": name, "settings": settings})
        server = TLSServer(context, handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = "https://127.0.0.1:%d" % server.server_address[1]
    control = os.path.join(os.path.dirname(os.path.abspath(state_path)), "control.sock")
    serve_control(cluster, control)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(ready_path + ".tmp", "w") as f:
        json.dump({"ca": ca, "servers": servers, "control": control}, f)
    os.rename(ready_path + ".tmp", ready_path)
    while not stop.wait(3600):
        pass
    cluster.stop_all()
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "serve":
        sys.exit("usage: apiserver.py serve STATE_JSON CALLS_LOG READY_JSON")
    serve(*sys.argv[2:5])
