package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/helixflow/helixflow/test/testengine"
)

// target is where the load goes: a base URL and, for the runtime, the Authorization header;
// and the processes that serve it, whose CPU time is measured beside the harness's own.
type target struct {
	url           string
	authorization string
	// enginePID is the test engine's process.
	enginePID int
	// proxyPID is the proxy's process (runtime serve; nginx's master, counted with its
	// workers); 0 on the direct path.
	proxyPID int
}

// cpuSnapshot is the CPU time used so far by the harness, the engine and the proxy, and by
// the whole machine.
type cpuSnapshot struct {
	harness, engine, proxy time.Duration
	machine                machineTimes
	err                    error
}

// machineTimes is CPU time of all CPUs together: busy (user, nice, system, irq, softirq: any
// process, the kernel's own threads included), idle (idle, iowait), and stolen by the
// hypervisor (time a virtual CPU was ready to run and the host ran something else).
type machineTimes struct {
	busy, idle, steal time.Duration
}

func (m machineTimes) sub(from machineTimes) machineTimes {
	return machineTimes{busy: m.busy - from.busy, idle: m.idle - from.idle, steal: m.steal - from.steal}
}

func (m machineTimes) total() time.Duration { return m.busy + m.idle + m.steal }

func (t target) cpu() cpuSnapshot {
	var s cpuSnapshot
	var errs [4]error
	s.harness, errs[0] = selfCPU()
	s.engine, errs[1] = treeCPU(t.enginePID)
	if t.proxyPID != 0 {
		s.proxy, errs[2] = treeCPU(t.proxyPID)
	}
	s.machine, errs[3] = machineCPU()
	s.err = errors.Join(errs[:]...)
	return s
}

// The request every client sends, and what the engine's usage for it must be: 5 prompt
// words, 8 completion tokens (the test engine counts words and honours max_tokens).
var (
	requestBody = []byte(`{"model":"` + testengine.DefaultModel +
		`","messages":[{"role":"user","content":"Say hello to the benchmark"}],"max_tokens":8}`)
	wantUsage = []byte(`"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}`)
)

const (
	promptTokens     = 5
	completionTokens = 8
)

// loadResult is one path in one round.
type loadResult struct {
	// Requests completed in the measured window (answered or failed); Errors among them.
	Requests, Errors int64
	// Elapsed is the measured window, until the last client finished its last request.
	Elapsed time.Duration
	RPS     float64
	// P50 and P99 are over the successful requests of the window.
	P50, P99 time.Duration
	// ErrorSamples counts errors by message.
	ErrorSamples map[string]int64
	// Sent counts every successful request, warm-up included.
	Sent int64
	// HarnessCPU, EngineCPU and ProxyCPU are the CPU time used in the measured window by
	// the harness process (the load generator), the engine process and the proxy process
	// (runtime serve; nginx's master and workers; none on the direct path); CPUErr says why
	// they are unknown.
	HarnessCPU, EngineCPU, ProxyCPU time.Duration
	// Machine is the whole machine's CPU time in the window.
	Machine machineTimes
	CPUErr  error
}

// machineShare is the share of the window's CPU time (all CPUs) that f picks, or 0 when
// unknown.
func (r loadResult) machineShare(f func(loadResult) time.Duration) float64 {
	if r.CPUErr != nil || r.Machine.total() <= 0 {
		return 0
	}
	return float64(f(r)) / float64(r.Machine.total())
}

// perRequest is d per request of the window, or 0 when unknown.
func (r loadResult) perRequest(d time.Duration) time.Duration {
	if r.CPUErr != nil || r.Requests == 0 {
		return 0
	}
	return d / time.Duration(r.Requests)
}

// pathCPU is the CPU time of all the path's processes together in the window.
func (r loadResult) pathCPU() time.Duration { return r.HarnessCPU + r.EngineCPU + r.ProxyCPU }

// CPUPerRequest is the CPU time, all processes of the path together, per request.
func (r loadResult) CPUPerRequest() time.Duration { return r.perRequest(r.pathCPU()) }

func newTransport(conns int) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		// No Accept-Encoding: gzip; none of the paths compresses, and the body is checked raw.
		DisableCompression: true,
	}
}

// newRequest builds one chat completion request to t.
func newRequest(ctx context.Context, t target, header http.Header) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url+"/v1/chat/completions", bytes.NewReader(requestBody))
	if err != nil {
		return nil, err
	}
	req.Header = header
	return req, nil
}

func requestHeader(t target) http.Header {
	h := http.Header{"Content-Type": {"application/json"}}
	if t.authorization != "" {
		h.Set("Authorization", t.authorization)
	}
	return h
}

// probe sends one request and checks the whole answer, decoded: an OpenAI chat.completion
// with one assistant message and the exact usage.
func probe(ctx context.Context, t target) error {
	c := &http.Client{Transport: newTransport(1), Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	req, err := newRequest(ctx, t, requestHeader(t))
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	var v struct {
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Message struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("answer is not JSON: %w: %s", err, body)
	}
	switch {
	case v.Object != "chat.completion" || v.Model != testengine.DefaultModel:
		return fmt.Errorf("unexpected object %q / model %q: %s", v.Object, v.Model, body)
	case len(v.Choices) != 1 || v.Choices[0].Message.Role != "assistant" || len(strings.Fields(v.Choices[0].Message.Content)) != completionTokens:
		return fmt.Errorf("unexpected choices: %s", body)
	case v.Usage == nil || v.Usage.PromptTokens != promptTokens || v.Usage.CompletionTokens != completionTokens ||
		v.Usage.TotalTokens != promptTokens+completionTokens:
		return fmt.Errorf("unexpected usage: %s", body)
	case !bytes.Contains(body, wantUsage):
		// The load generator checks the usage by this byte string; make sure it matches.
		return fmt.Errorf("usage not spelled %s: %s", wantUsage, body)
	}
	return nil
}

// clientStats is what one client saw.
type clientStats struct {
	latencies []time.Duration
	requests  int64
	errors    int64
	sent      int64
	samples   map[string]int64
	last      time.Time
}

func (s *clientStats) fail(msg string) {
	s.errors++
	if s.samples == nil {
		s.samples = map[string]int64{}
	}
	if len(s.samples) < 20 {
		s.samples[msg]++
	} else if _, ok := s.samples[msg]; ok {
		s.samples[msg]++
	} else {
		s.samples["(other errors)"]++
	}
}

// runLoad runs clients loops of requests to t for warmup+duration, measuring the requests
// that start after the warm-up.
func runLoad(ctx context.Context, t target, clients int, warmup, duration time.Duration) loadResult {
	tr := newTransport(2 * clients)
	defer tr.CloseIdleConnections()
	httpClient := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	begin := time.Now()
	measureFrom := begin.Add(warmup)
	end := measureFrom.Add(duration)
	stats := make([]*clientStats, clients)
	var cpuFrom cpuSnapshot
	cpuTaken := make(chan struct{})
	time.AfterFunc(warmup, func() { cpuFrom = t.cpu(); close(cpuTaken) })
	var wg sync.WaitGroup
	for i := range clients {
		st := &clientStats{latencies: make([]time.Duration, 0, 1<<14)}
		stats[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			header := requestHeader(t)
			var buf bytes.Buffer
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				ok, msg := do(ctx, httpClient, t, header, &buf)
				t1 := time.Now()
				if ok {
					st.sent++
				}
				if t0.Before(measureFrom) {
					continue
				}
				st.requests++
				st.last = t1
				if !ok {
					st.fail(msg)
					continue
				}
				st.latencies = append(st.latencies, t1.Sub(t0))
			}
		}()
	}
	wg.Wait()
	cpuTo := t.cpu()
	<-cpuTaken

	res := loadResult{ErrorSamples: map[string]int64{}}
	if res.CPUErr = cpuFrom.err; res.CPUErr == nil {
		res.CPUErr = cpuTo.err
	}
	res.HarnessCPU = cpuTo.harness - cpuFrom.harness
	res.EngineCPU = cpuTo.engine - cpuFrom.engine
	res.ProxyCPU = cpuTo.proxy - cpuFrom.proxy
	res.Machine = cpuTo.machine.sub(cpuFrom.machine)
	var all []time.Duration
	last := end
	for _, st := range stats {
		res.Requests += st.requests
		res.Errors += st.errors
		res.Sent += st.sent
		all = append(all, st.latencies...)
		for k, v := range st.samples {
			res.ErrorSamples[k] += v
		}
		if st.last.After(last) {
			last = st.last
		}
	}
	res.Elapsed = last.Sub(measureFrom)
	if res.Elapsed > 0 {
		res.RPS = float64(res.Requests-res.Errors) / res.Elapsed.Seconds()
	}
	slices.Sort(all)
	res.P50, res.P99 = percentile(all, 0.50), percentile(all, 0.99)
	return res
}

// do sends one request and checks the answer: 200 and the exact usage.
func do(ctx context.Context, c *http.Client, t target, header http.Header, buf *bytes.Buffer) (bool, string) {
	req, err := newRequest(ctx, t, header)
	if err != nil {
		return false, err.Error()
	}
	resp, err := c.Do(req)
	if err != nil {
		return false, err.Error()
	}
	buf.Reset()
	_, err = buf.ReadFrom(resp.Body)
	_ = resp.Body.Close()
	switch {
	case err != nil:
		return false, "reading answer: " + err.Error()
	case resp.StatusCode != http.StatusOK:
		b := buf.Bytes()
		if len(b) > 200 {
			b = b[:200]
		}
		return false, fmt.Sprintf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	case !bytes.Contains(buf.Bytes(), wantUsage):
		return false, "200 without the expected usage"
	}
	return true, ""
}

// percentile is the nearest-rank q-quantile of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
