// Command sessioncheck decodes Session snapshots, one JSON object per line on stdin, with
// the seed SDK's model (session.go) and reports every line that does not decode.
//
// Output: one line per failure on stdout, "line N: <error> (id <id>)", then a summary on
// stderr. Exit status 0 when every snapshot decoded, 1 when one did not, 2 on read errors.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	reader := bufio.NewReaderSize(os.Stdin, 1<<20)
	out := bufio.NewWriter(os.Stdout)
	decoded, failed, number := 0, 0, 0
	for {
		// ReadBytes, not a Scanner: a snapshot may be far longer than a Scanner's line limit.
		line, err := reader.ReadBytes('\n')
		if len(line) > 0 {
			number++
			line = bytes.TrimSpace(line)
			if len(line) > 0 {
				var session Session
				if decodeErr := json.Unmarshal(line, &session); decodeErr != nil {
					failed++
					fmt.Fprintf(out, "line %d: %v (id %s)\n", number, decodeErr, idOf(line))
				} else {
					decoded++
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			out.Flush()
			fmt.Fprintf(os.Stderr, "sessioncheck: reading stdin: %v\n", err)
			os.Exit(2)
		}
	}
	out.Flush()
	fmt.Fprintf(os.Stderr, "sessioncheck: %d snapshots decoded, %d failed\n", decoded, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// idOf names the session of a line that failed, when it has a readable string id.
func idOf(line []byte) string {
	var probe struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(line, &probe) != nil {
		return "unknown"
	}
	if id, ok := probe.ID.(string); ok {
		return fmt.Sprintf("%q", id)
	}
	return "unknown"
}
