// httpbench: an HTTP server and a load generator, for sysmirror-bench.
//
//	httpbench serve ADDRESS [ANSWER]             answer every request with a short body: ANSWER (default pod)
//	httpbench load URL SECONDS CLIENTS keepalive|close
//	                                              requests per second from CLIENTS goroutines, each request on
//	                                              a kept-alive connection or on a new one
//	httpbench rotate COUNT keepalive|close TARGET...
//	                                              latency of each TARGET (URL, or URL|Name: value), their
//	                                              requests taking turns one at a time, each target on a client
//	                                              of its own: every target meets the same moments of the
//	                                              machine. A line per target: target N p50_us P p99_us Q
//	                                              answers A (the distinct bodies, sorted: "alice,pod")
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
	case len(os.Args) >= 5 && os.Args[1] == "rotate":
		count, _ := strconv.Atoi(os.Args[2])
		for index, result := range roundTrips(os.Args[4:], count, os.Args[3] == "close") {
			fmt.Printf("target %d p50_us %.1f p99_us %.1f answers %s\n", index+1, result.p50, result.p99, result.answers)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: httpbench serve ADDRESS [ANSWER] | load URL SECONDS CLIENTS keepalive|close | rotate COUNT keepalive|close TARGET...")
		os.Exit(2)
	}
}

type latency struct {
	p50, p99 float64
	answers  string // the distinct bodies, sorted and joined by commas
}

// roundTrips sends count requests (after a tenth more to warm up) to each target (URL, or URL|Name: value),
// one at a time, the targets taking turns; each target has a client of its own.
func roundTrips(targets []string, count int, close bool) []latency {
	type state struct {
		client  *http.Client
		request *http.Request
		samples []time.Duration
		answers map[string]bool
	}
	states := make([]*state, len(targets))
	for index, target := range targets {
		url, header, hasHeader := strings.Cut(target, "|")
		request, err := http.NewRequest("GET", url, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if hasHeader {
			name, value, found := strings.Cut(header, ":")
			if !found {
				fmt.Fprintln(os.Stderr, "a header is Name: value, not", header)
				os.Exit(2)
			}
			request.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: close}}
		states[index] = &state{client, request, make([]time.Duration, 0, count), map[string]bool{}}
	}
	warmUp := count / 10
	for i := 0; i < count+warmUp; i++ {
		for _, s := range states {
			start := time.Now()
			response, err := s.client.Do(s.request)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			body, _ := io.ReadAll(response.Body)
			response.Body.Close()
			if i >= warmUp {
				s.samples = append(s.samples, time.Since(start))
			}
			s.answers[strings.TrimSpace(string(body))] = true
		}
	}
	microseconds := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	results := make([]latency, len(states))
	for index, s := range states {
		sort.Slice(s.samples, func(a, b int) bool { return s.samples[a] < s.samples[b] })
		names := make([]string, 0, len(s.answers))
		for name := range s.answers {
			names = append(names, name)
		}
		sort.Strings(names)
		results[index] = latency{
			microseconds(s.samples[count/2]), microseconds(s.samples[count*99/100]), strings.Join(names, ","),
		}
	}
	return results
}
