package log

import (
	"os"
	"time"
)

// SignCheckpointForTest signs a checkpoint line for seq and hash with the
// key in keyPath, as the log would.
func SignCheckpointForTest(keyPath string, seq uint64, hash string, t time.Time) ([]byte, error) {
	if _, err := os.Stat(keyPath); err != nil {
		return nil, err
	}
	s, err := newSigner(&checkpointSettings{keyFile: keyPath, every: time.Minute})
	if err != nil {
		return nil, err
	}
	return s.line(head{Seq: seq, Hash: hash}, t), nil
}
