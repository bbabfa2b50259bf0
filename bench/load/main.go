// Command load is a closed-loop HTTP load generator for the chat service benchmark.
//
// N workers share one keep-alive connection pool; each sends a request, reads the whole response
// (a streamed one to its end) and sends the next, for a warm-up (not counted), then until the
// duration is over or the request cap is reached, whichever comes first. The result is one JSON
// line: requests, errors, requests/s, latency percentiles in milliseconds.
//
// Modes: "plain" POSTs -body and expects 200; "stream" POSTs -body and expects an event stream that
// ends with "data: [DONE]"; "chat" POSTs {"message", "session_id"} to the chat service's /chat: each
// worker starts a session with its first turn and continues it with the session_id of the reply
// (a new one every -turns-per-session turns, when set), or turns round-robin on the -sessions given.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type config struct {
	url             string
	mode            string
	body            []byte
	message         string
	concurrency     int
	duration        time.Duration
	warmup          time.Duration
	requests        int64
	perWorker       int
	turnsPerSession int
	sessions        []string
	timeout         time.Duration
	header          string
}

type chatBody struct {
	Message   string `json:"message"`
	SessionID string `json:"session_id,omitempty"`
}

type chatReply struct {
	SessionID string         `json:"session_id"`
	Usage     map[string]int `json:"usage"`
}

type worker struct {
	cfg       *config
	client    *http.Client
	buf       bytes.Buffer
	sid       string
	turns     int
	created   []string
	latencies []time.Duration
	errors    int
	warm      int
	firstErr  string
	lastUsage map[string]int
}

type result struct {
	Mode        string         `json:"mode"`
	Concurrency int            `json:"concurrency"`
	Requests    int            `json:"requests"`
	Warmup      int            `json:"warmup_requests"`
	Errors      int            `json:"errors"`
	Seconds     float64        `json:"seconds"`
	RPS         float64        `json:"rps"`
	P50         float64        `json:"p50_ms"`
	P90         float64        `json:"p90_ms"`
	P99         float64        `json:"p99_ms"`
	Mean        float64        `json:"mean_ms"`
	Max         float64        `json:"max_ms"`
	FirstError  string         `json:"first_error,omitempty"`
	Sessions    []string       `json:"sessions,omitempty"`
	LastUsage   map[string]int `json:"last_usage,omitempty"`
}

var next atomic.Int64 // round-robin position in -sessions

func (w *worker) requestBody() ([]byte, error) {
	if w.cfg.mode != "chat" {
		return w.cfg.body, nil
	}
	sid := w.sid
	if len(w.cfg.sessions) > 0 {
		sid = w.cfg.sessions[int(next.Add(1)-1)%len(w.cfg.sessions)]
	}
	return json.Marshal(chatBody{Message: w.cfg.message, SessionID: sid})
}

// one sends one request and reads the whole response; it returns how long that took.
func (w *worker) one(ctx context.Context) (time.Duration, error) {
	body, err := w.requestBody()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.cfg.url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if name, value, ok := strings.Cut(w.cfg.header, ":"); ok {
		req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if w.cfg.mode == "stream" {
		req.Header.Set("Accept", "text/event-stream")
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return 0, err
	}
	w.buf.Reset()
	_, err = w.buf.ReadFrom(resp.Body)
	resp.Body.Close()
	elapsed := time.Since(start)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, w.buf.String())
	}
	switch w.cfg.mode {
	case "stream":
		// Chat Completions streams end with [DONE]; Responses streams with a response.completed event.
		done := bytes.HasSuffix(bytes.TrimRight(w.buf.Bytes(), "\n"), []byte("data: [DONE]"))
		if !done && !bytes.Contains(w.buf.Bytes(), []byte("event: response.completed\n")) {
			return 0, fmt.Errorf("stream without [DONE]: %.200s", w.buf.String())
		}
	case "chat":
		var reply chatReply
		if err := json.Unmarshal(w.buf.Bytes(), &reply); err != nil || reply.SessionID == "" {
			return 0, fmt.Errorf("chat reply without session_id: %.200s", w.buf.String())
		}
		w.lastUsage = reply.Usage
		if len(w.cfg.sessions) == 0 {
			w.sid = reply.SessionID
			w.turns++
			if w.cfg.turnsPerSession > 0 && w.turns >= w.cfg.turnsPerSession {
				w.created = append(w.created, w.sid)
				w.sid, w.turns = "", 0
			}
		}
	}
	return elapsed, nil
}

// run sends requests until the deadline, or until the shared budget or this worker's cap runs out.
func (w *worker) run(deadline time.Time, budget *atomic.Int64, perWorker int, record bool) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(w.cfg.timeout))
	defer cancel()
	done := 0
	for time.Now().Before(deadline) && (perWorker <= 0 || done < perWorker) {
		if budget != nil && budget.Add(-1) < 0 {
			return
		}
		done++
		elapsed, err := w.one(ctx)
		if err != nil {
			if record {
				w.errors++
				if w.firstErr == "" {
					w.firstErr = err.Error()
				}
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return
			}
			time.Sleep(time.Millisecond) // a refused connection must not spin
			continue
		}
		if record {
			w.latencies = append(w.latencies, elapsed)
		} else {
			w.warm++
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(p*float64(len(sorted)-1)+0.5)]
}

func main() {
	cfg := config{}
	var bodyText, bodyFile, sessions string
	flag.StringVar(&cfg.url, "url", "", "URL to POST to")
	flag.StringVar(&cfg.mode, "mode", "plain", "plain, stream or chat")
	flag.StringVar(&bodyText, "body", "", "JSON body (plain and stream)")
	flag.StringVar(&bodyFile, "body-file", "", "file with the JSON body (plain and stream)")
	flag.StringVar(&cfg.message, "message", "Hello! What can you tell me about Kubernetes operators?", "chat message")
	flag.IntVar(&cfg.concurrency, "c", 1, "concurrent workers (connections)")
	flag.DurationVar(&cfg.duration, "duration", 5*time.Second, "measured time (the upper bound with -requests)")
	flag.DurationVar(&cfg.warmup, "warmup", time.Second, "warm-up time, not counted")
	flag.Int64Var(&cfg.requests, "requests", 0, "stop after this many measured requests in all (0: no cap)")
	flag.IntVar(&cfg.perWorker, "per-worker", 0, "stop each worker after this many measured requests (0: no cap)")
	flag.IntVar(&cfg.turnsPerSession, "turns-per-session", 0, "chat: start a new session after this many turns")
	flag.StringVar(&sessions, "sessions", "", "chat: comma-separated session ids to take turns on, round-robin")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "per-request timeout")
	flag.StringVar(&cfg.header, "header", "", "one more request header, 'Name: value' (e.g. Authorization)")
	flag.Parse()
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "load: "+format+"\n", args...)
		os.Exit(2)
	}
	if cfg.url == "" || cfg.concurrency < 1 || cfg.duration <= 0 {
		fail("-url, -c >= 1 and -duration > 0 are required")
	}
	switch cfg.mode {
	case "plain", "stream":
		if bodyFile != "" {
			data, err := os.ReadFile(bodyFile)
			if err != nil {
				fail("%v", err)
			}
			bodyText = string(data)
		}
		if !json.Valid([]byte(bodyText)) {
			fail("-body (or -body-file) must be valid JSON")
		}
		cfg.body = []byte(bodyText)
	case "chat":
		if sessions != "" {
			cfg.sessions = strings.Split(sessions, ",")
		}
	default:
		fail("unknown -mode %q", cfg.mode)
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        cfg.concurrency * 2,
		MaxIdleConnsPerHost: cfg.concurrency * 2,
		MaxConnsPerHost:     cfg.concurrency,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport, Timeout: cfg.timeout}
	workers := make([]*worker, cfg.concurrency)
	for i := range workers {
		workers[i] = &worker{cfg: &cfg, client: client}
	}
	parallel := func(deadline time.Time, budget *atomic.Int64, perWorker int, record bool) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.run(deadline, budget, perWorker, record)
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	if cfg.warmup > 0 {
		parallel(time.Now().Add(cfg.warmup), nil, 0, false)
	}
	var budget *atomic.Int64
	if cfg.requests > 0 {
		budget = &atomic.Int64{}
		budget.Store(cfg.requests)
	}
	elapsed := parallel(time.Now().Add(cfg.duration), budget, cfg.perWorker, true)

	var all []time.Duration
	res := result{Mode: cfg.mode, Concurrency: cfg.concurrency, Seconds: elapsed.Seconds()}
	var sum time.Duration
	for _, w := range workers {
		all = append(all, w.latencies...)
		res.Errors += w.errors
		res.Warmup += w.warm
		if res.FirstError == "" {
			res.FirstError = w.firstErr
		}
		res.Sessions = append(res.Sessions, w.created...)
		if w.sid != "" {
			res.Sessions = append(res.Sessions, w.sid)
		}
		if w.lastUsage != nil {
			res.LastUsage = w.lastUsage
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	for _, d := range all {
		sum += d
	}
	res.Requests = len(all)
	if len(all) > 0 {
		res.RPS = float64(len(all)) / elapsed.Seconds()
		res.P50 = ms(percentile(all, 0.50))
		res.P90 = ms(percentile(all, 0.90))
		res.P99 = ms(percentile(all, 0.99))
		res.Mean = ms(sum / time.Duration(len(all)))
		res.Max = ms(all[len(all)-1])
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
