// gofixture: a static Go program (CGO_ENABLED=0) with modes, for tests under sysmirror trace.
//
//	gofixture read FILE STATUS   print FILE, exit with STATUS
//	gofixture many N FILE        open FILE from N goroutines at once; print "ok N"
//	gofixture exec PROGRAM ARGS  run PROGRAM with os/exec (CLONE_VFORK) and print its output
//	gofixture pod CONFIG DIR     what a service reads in its pod: CONFIG, the service-account token, the
//	                             entries of DIR, its hostname and $DB_HOST
//	gofixture get URL            print the body of an HTTP GET
//	gofixture gets N URL         N GETs at once, each on a new connection; print "ok N" when all succeed
//	gofixture lookup NAME        print how many addresses NAME resolves to (pure Go resolver)
//	gofixture udp ADDRESS TEXT   send TEXT in a datagram on a connected UDP socket; print the answer
//	gofixture rereads N FILE     read FILE N times (as client-go re-reads its token); print "ok N" and its
//	                             first line when every read had the same content
//	gofixture serve NAME ADDRESS an HTTP server on ADDRESS answering "NAME CLIENT-IP"; prints each
//	                             request's path and X-Dev header
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 3 {
		os.Exit(2)
	}
	switch os.Args[1] {
	case "read":
		data, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		os.Stdout.Write(data)
		status, _ := strconv.Atoi(os.Args[3])
		os.Exit(status)
	case "many":
		n, _ := strconv.Atoi(os.Args[2])
		atOnce(n, func() bool {
			file, err := os.Open(os.Args[3])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return false
			}
			file.Close()
			return true
		})
	case "pod":
		config, err := os.ReadFile(os.Args[2])
		check(err)
		token, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/token")
		check(err)
		entries, err := os.ReadDir(os.Args[3])
		check(err)
		var names []string
		for _, entry := range entries {
			kind := "file"
			if entry.IsDir() {
				kind = "dir"
			}
			names = append(names, entry.Name()+":"+kind)
		}
		info, err := os.Stat(os.Args[2])
		check(err)
		hostname, err := os.Hostname()
		check(err)
		fmt.Printf("config: %s", config)
		fmt.Printf("token: %s\n", token)
		fmt.Printf("entries: %s\n", strings.Join(names, " "))
		fmt.Printf("size: %d mode: %v\n", info.Size(), info.Mode())
		fmt.Printf("hostname: %s\n", hostname)
		fmt.Printf("DB_HOST: %s\n", os.Getenv("DB_HOST"))
	case "get":
		response, err := http.Get(os.Args[2])
		check(err)
		body, err := io.ReadAll(response.Body)
		check(err)
		os.Stdout.Write(body)
	case "gets":
		n, _ := strconv.Atoi(os.Args[2])
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		atOnce(n, func() bool {
			response, err := client.Get(os.Args[3])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return false
			}
			body, err := io.ReadAll(response.Body)
			response.Body.Close()
			if err != nil || response.StatusCode != 200 || len(body) == 0 {
				fmt.Fprintln(os.Stderr, "bad response", response.StatusCode, err)
				return false
			}
			return true
		})
	case "lookup":
		addresses, err := net.LookupHost(os.Args[2])
		check(err)
		fmt.Println(len(addresses))
	case "rereads":
		n, _ := strconv.Atoi(os.Args[2])
		first, err := os.ReadFile(os.Args[3])
		check(err)
		for i := 1; i < n; i++ {
			data, err := os.ReadFile(os.Args[3])
			check(err)
			if string(data) != string(first) {
				fmt.Fprintf(os.Stderr, "read %d differs: %q\n", i, data)
				os.Exit(1)
			}
		}
		fmt.Printf("ok %d %s\n", n, strings.SplitN(string(first), "\n", 2)[0])
	case "udp":
		connection, err := net.Dial("udp", os.Args[2])
		check(err)
		_, err = connection.Write([]byte(os.Args[3]))
		check(err)
		check(connection.SetReadDeadline(time.Now().Add(5 * time.Second)))
		answer := make([]byte, 1500)
		n, err := connection.Read(answer)
		check(err)
		fmt.Printf("%s\n", answer[:n])
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			client, _, _ := net.SplitHostPort(r.RemoteAddr)
			io.Copy(io.Discard, r.Body)
			fmt.Printf("%s %s\n", r.URL.Path, r.Header.Get("X-Dev"))
			fmt.Fprintf(w, "%s %s\n", os.Args[2], client)
		})
		check(http.ListenAndServe(os.Args[3], nil))
	case "exec":
		output, err := exec.Command(os.Args[2], os.Args[3:]...).CombinedOutput()
		os.Stdout.Write(output)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
}

// atOnce runs work in n goroutines released together, prints "ok" and how many succeeded, and exits 1 unless
// all did.
func atOnce(n int, work func() bool) {
	var wait sync.WaitGroup
	var mutex sync.Mutex
	succeeded := 0
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wait.Add(1)
		go func() {
			defer wait.Done()
			<-start
			if work() {
				mutex.Lock()
				succeeded++
				mutex.Unlock()
			}
		}()
	}
	close(start)
	wait.Wait()
	fmt.Printf("ok %d\n", succeeded)
	if succeeded != n {
		os.Exit(1)
	}
}
