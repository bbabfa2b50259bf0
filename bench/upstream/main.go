// Command upstream is a zero-latency OpenAI-compatible Chat Completions server for benchmarks.
//
// POST /v1/chat/completions parses the request JSON (so a big body costs what it costs) and answers
// at once with a short reply: a plain JSON completion with usage, or, with "stream": true, Server-Sent
// Events of 11 chunks (flushed one by one), a usage chunk when stream_options.include_usage is set,
// then [DONE]. GET /healthz answers 200. It prints "listening on HOST:PORT" once it accepts connections.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The reply, in the 11 pieces a streamed answer is sent as.
var replyPieces = []string{
	"Hello", "!", " This", " is", " a", " short", " benchmark", " reply", " from", " the", " upstream.",
}

var replyText = strings.Join(replyPieces, "")

type request struct {
	Model         string         `json:"model"`
	Messages      []message      `json:"messages"`
	Stream        bool           `json:"stream"`
	StreamOptions *streamOptions `json:"stream_options"`
	MaxTokens     *int           `json:"max_tokens"`
	MaxCompletion *int           `json:"max_completion_tokens"`
	Temperature   *float64       `json:"temperature"`
}

type message struct {
	Role    string `json:"role"`
	Content any    `json:"content"` // a string, or a list of content parts
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type replyMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type choice struct {
	Index        int          `json:"index"`
	Message      replyMessage `json:"message"`
	Logprobs     any          `json:"logprobs"`
	FinishReason string       `json:"finish_reason"`
}

type completion struct {
	ID      string   `json:"id"`
	Object  string   `json:"object"`
	Created int64    `json:"created"`
	Model   string   `json:"model"`
	Choices []choice `json:"choices"`
	Usage   usage    `json:"usage"`
}

type delta struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content"`
}

type chunkChoice struct {
	Index        int     `json:"index"`
	Delta        delta   `json:"delta"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
}

type chunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []chunkChoice `json:"choices"`
	Usage   *usage        `json:"usage,omitempty"`
}

var counter atomic.Uint64

// promptTokens approximates the prompt's size: about 4 characters per token plus framing.
func promptTokens(messages []message) int {
	chars := 0
	for _, m := range messages {
		switch c := m.Content.(type) {
		case string:
			chars += len(c)
		case []any:
			for _, part := range c {
				if p, ok := part.(map[string]any); ok {
					if t, ok := p["text"].(string); ok {
						chars += len(t)
					}
				}
			}
		}
	}
	return chars/4 + 4*len(messages) + 3
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body, _ := json.Marshal(map[string]any{
		"error": map[string]any{"type": "invalid_request_error", "code": code, "message": msg},
	})
	_, _ = w.Write(body)
}

func completions(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "POST only")
		return
	}
	var req request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "malformed_json", err.Error())
		return
	}
	if len(req.Messages) == 0 {
		writeError(w, http.StatusBadRequest, "invalid_messages", "'messages' must be a non-empty list")
		return
	}
	id := "chatcmpl-bench" + strconv.FormatUint(counter.Add(1), 10)
	created := time.Now().Unix()
	model := req.Model
	if model == "" {
		model = "bench-model"
	}
	u := usage{PromptTokens: promptTokens(req.Messages), CompletionTokens: len(replyPieces)}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	w.Header().Set("x-request-id", id)
	if !req.Stream {
		body, _ := json.Marshal(completion{
			ID: id, Object: "chat.completion", Created: created, Model: model,
			Choices: []choice{{Message: replyMessage{Role: "assistant", Content: replyText}, FinishReason: "stop"}},
			Usage:   u,
		})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
		return
	}
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	send := func(c chunk) {
		data, _ := json.Marshal(c)
		_, _ = w.Write([]byte("data: "))
		_, _ = w.Write(data)
		_, _ = w.Write([]byte("\n\n"))
		if flusher != nil {
			flusher.Flush()
		}
	}
	stop := "stop"
	for i, piece := range replyPieces {
		d := delta{Content: piece}
		if i == 0 {
			d.Role = "assistant"
		}
		cc := chunkChoice{Delta: d}
		if i == len(replyPieces)-1 {
			cc.FinishReason = &stop
		}
		send(chunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model, Choices: []chunkChoice{cc}})
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		send(chunk{ID: id, Object: "chat.completion.chunk", Created: created, Model: model,
			Choices: []chunkChoice{}, Usage: &u})
	}
	_, _ = w.Write([]byte("data: [DONE]\n\n"))
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (port 0: any free port)")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat/completions", completions)
	mux.HandleFunc("/chat/completions", completions)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	_ = os.Stdout.Sync()
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 120 * time.Second}
	log.Fatal(server.Serve(ln))
}
