// debuggee (Node): reads the pod's service-account token, prints it and exits with status 7.
// DebuggerTests stop on the line marked "break here", where `token` holds what the pod's file held.
const fs = require('fs');

const token = fs.readFileSync('/var/run/secrets/kubernetes.io/serviceaccount/token', 'utf8');
console.log('token: ' + token); // break here
process.exit(7);
