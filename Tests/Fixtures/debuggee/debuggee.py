# debuggee (Python): reads the pod's service-account token, prints it and exits with status 7.
# DebuggerTests stop on the line marked "break here", where `token` holds what the pod's file held.
import sys

with open('/var/run/secrets/kubernetes.io/serviceaccount/token') as file:
    token = file.read()
print('token: ' + token)  # break here
sys.exit(7)
