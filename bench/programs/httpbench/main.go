// httpbench: an HTTP server and a load generator, for sysmirror-bench.
//
//	httpbench serve ADDRESS [ANSWER]             answer every request with a short body: ANSWER (default pod)
//	httpbench load URL SECONDS CLIENTS keepalive|close
//	                                              requests per second from CLIENTS goroutines, each request on
//	                                              a kept-alive connection or on a new one
//	httpbench latency URL COUNT keepalive|close [HEADER]
//	                                              one request at a time, each with HEADER ("Name: value") if
//	                                              given; the p50 and p99 round trip in µs, and the answers
//	                                              (their distinct bodies, sorted: "alice" or "alice,pod")
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	switch {
	case (len(os.Args) == 3 || len(os.Args) == 4) && os.Args[1] == "serve":
		answer := "pod\n"
		if len(os.Args) == 4 {
			answer = os.Args[3] + "\n"
		}
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, answer) })
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
	case (len(os.Args) == 5 || len(os.Args) == 6) && os.Args[1] == "latency":
		count, _ := strconv.Atoi(os.Args[3])
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: os.Args[4] == "close"}}
		request, err := http.NewRequest("GET", os.Args[2], nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if len(os.Args) == 6 {
			name, value, found := strings.Cut(os.Args[5], ":")
			if !found {
				fmt.Fprintln(os.Stderr, "a header is Name: value, not", os.Args[5])
				os.Exit(2)
			}
			request.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		warmUp := count / 10
		samples := make([]time.Duration, 0, count)
		answers := map[string]bool{}
		for i := 0; i < count+warmUp; i++ {
			start := time.Now()
			response, err := client.Do(request)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			body, _ := io.ReadAll(response.Body)
			response.Body.Close()
			if i >= warmUp {
				samples = append(samples, time.Since(start))
			}
			answers[strings.TrimSpace(string(body))] = true
		}
		sort.Slice(samples, func(a, b int) bool { return samples[a] < samples[b] })
		microseconds := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
		fmt.Printf("p50_us %.1f\np99_us %.1f\n", microseconds(samples[count/2]), microseconds(samples[count*99/100]))
		names := make([]string, 0, len(answers))
		for name := range answers {
			names = append(names, name)
		}
		sort.Strings(names)
		fmt.Printf("answers %s\n", strings.Join(names, ","))
	default:
		fmt.Fprintln(os.Stderr, "usage: httpbench serve ADDRESS [ANSWER] | load URL SECONDS CLIENTS keepalive|close | latency URL COUNT keepalive|close [HEADER]")
		os.Exit(2)
	}
}
