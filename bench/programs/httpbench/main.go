// httpbench: an HTTP server and a load generator, for sysmirror-bench.
//
//	httpbench serve ADDRESS                      answer every request with a short body
//	httpbench load URL SECONDS CLIENTS keepalive|close
//	                                              requests per second from CLIENTS goroutines, each request on
//	                                              a kept-alive connection or on a new one
//	httpbench latency URL COUNT keepalive|close  one request at a time; the p50 and p99 round trip in µs
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
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
	case len(os.Args) == 5 && os.Args[1] == "latency":
		count, _ := strconv.Atoi(os.Args[3])
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: os.Args[4] == "close"}}
		warmUp := count / 10
		samples := make([]time.Duration, 0, count)
		for i := 0; i < count+warmUp; i++ {
			start := time.Now()
			response, err := client.Get(os.Args[2])
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			io.Copy(io.Discard, response.Body)
			response.Body.Close()
			if i >= warmUp {
				samples = append(samples, time.Since(start))
			}
		}
		sort.Slice(samples, func(a, b int) bool { return samples[a] < samples[b] })
		microseconds := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
		fmt.Printf("p50_us %.1f\np99_us %.1f\n", microseconds(samples[count/2]), microseconds(samples[count*99/100]))
	default:
		fmt.Fprintln(os.Stderr, "usage: httpbench serve ADDRESS | load URL SECONDS CLIENTS keepalive|close | latency URL COUNT keepalive|close")
		os.Exit(2)
	}
}
