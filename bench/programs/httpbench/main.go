// httpbench: an HTTP server and a load generator, for sysmirror-bench.
//
//	httpbench serve ADDRESS                      answer every request with a short body
//	httpbench load URL SECONDS CLIENTS keepalive|close
//	                                              requests per second from CLIENTS goroutines, each request on
//	                                              a kept-alive connection or on a new one
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	switch {
	case len(os.Args) == 3 && os.Args[1] == "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pod\n") })
		if err := http.ListenAndServe(os.Args[2], nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	case len(os.Args) == 6 && os.Args[1] == "load":
		seconds, _ := strconv.Atoi(os.Args[3])
		clients, _ := strconv.Atoi(os.Args[4])
		transport := &http.Transport{DisableKeepAlives: os.Args[5] == "close", MaxIdleConnsPerHost: clients}
		client := &http.Client{Transport: transport}
		var done, failed int64
		deadline := time.Now().Add(time.Duration(seconds) * time.Second)
		var wait sync.WaitGroup
		for i := 0; i < clients; i++ {
			wait.Add(1)
			go func() {
				defer wait.Done()
				for time.Now().Before(deadline) {
					response, err := client.Get(os.Args[2])
					if err != nil {
						atomic.AddInt64(&failed, 1)
						continue
					}
					io.Copy(io.Discard, response.Body)
					response.Body.Close()
					atomic.AddInt64(&done, 1)
				}
			}()
		}
		wait.Wait()
		fmt.Printf("requests_per_s %.0f\nfailed %d\n", float64(done)/float64(seconds), failed)
	default:
		fmt.Fprintln(os.Stderr, "usage: httpbench serve ADDRESS | load URL SECONDS CLIENTS keepalive|close")
		os.Exit(2)
	}
}
