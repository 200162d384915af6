// debuggee (Go): reads the pod's service-account token, prints it and exits with status 7. DebuggerTests
// stop on the line marked "break here", where `token` holds what the pod's file held. With "wait", it first
// prints "ready PID" and waits for a line on its input: time for a debugger to attach.
package main

import (
	"bufio"
	"fmt"
	"os"
)

func main() {
	data, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/token")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	token := string(data)
	if len(os.Args) > 1 && os.Args[1] == "wait" {
		fmt.Printf("ready %d\n", os.Getpid())
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	fmt.Printf("token: %s\n", token) // break here
	os.Exit(7)
}
