// Command auditor-go checks a consentvault audit log the way an outside
// auditor would, with Go's own transparency-log packages and none of
// consentvault's code: golang.org/x/mod/sumdb/note opens the signed
// checkpoint, golang.org/x/mod/sumdb/tlog checks every inclusion proof and
// the consistency proof from an earlier checkpoint. A vault whose log is
// smaller than the earlier checkpoint, or not consistent with it, was rolled
// back (for example restored from an older backup); the tool says so and
// exits non-zero.
//
// Usage:
//
//	auditor-go -vault http://127.0.0.1:8200 -token "$(cat vault-data/auditor-token)" \
//	    [-key VERIFIER_KEY] [-old OLD_CHECKPOINT_FILE]
//
// Without -key the verifier key is fetched from the vault; an auditor who
// holds the key already should pass it, so the vault cannot swap it.
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

var (
	vault = flag.String("vault", "http://127.0.0.1:8200", "base URL of the vault")
	token = flag.String("token", "", "auditor bearer token")
	key   = flag.String("key", "", "signed-note verifier key (default: fetched from the vault)")
	old   = flag.String("old", "", "a file holding an earlier signed checkpoint to prove consistency from")
)

func fetch(path string, auth bool) ([]byte, error) {
	request, err := http.NewRequest("GET", *vault+path, nil)
	if err != nil {
		return nil, err
	}
	if auth {
		request.Header.Set("Authorization", "Bearer "+*token)
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		return nil, err
	}
	if response.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s: %s", path, response.Status, body)
	}
	return body, nil
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// open verifies a signed checkpoint and parses its body (C2SP tlog-checkpoint).
func open(signed []byte, verifiers note.Verifiers) (checkpoint, error) {
	n, err := note.Open(signed, verifiers)
	if err != nil {
		return checkpoint{}, err
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		return checkpoint{}, errors.New("checkpoint body too short")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return checkpoint{}, err
	}
	rootBytes, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(rootBytes) != tlog.HashSize {
		return checkpoint{}, errors.New("bad root hash")
	}
	var root tlog.Hash
	copy(root[:], rootBytes)
	return checkpoint{lines[0], size, root}, nil
}

func hashes(encoded []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(encoded))
	for i, e := range encoded {
		b, err := base64.StdEncoding.DecodeString(e)
		if err != nil || len(b) != tlog.HashSize {
			return nil, errors.New("bad proof hash")
		}
		copy(out[i][:], b)
	}
	return out, nil
}

func run() error {
	flag.Parse()
	vkey := strings.TrimSpace(*key)
	if vkey == "" {
		fetched, err := fetch("/v1/audit/public-key", false)
		if err != nil {
			return err
		}
		vkey = strings.TrimSpace(string(fetched))
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %w", err)
	}
	verifiers := note.VerifierList(verifier)

	signed, err := fetch("/v1/audit/checkpoint", false)
	if err != nil {
		return err
	}
	current, err := open(signed, verifiers)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}

	// The kept checkpoint first: a rollback shows before any other work.
	var earlier checkpoint
	if *old != "" {
		oldSigned, err := os.ReadFile(*old)
		if err != nil {
			return err
		}
		earlier, err = open(oldSigned, verifiers)
		if err != nil {
			return fmt.Errorf("old checkpoint: %w", err)
		}
		// A log only grows: a vault whose log is smaller than a checkpoint it
		// signed earlier was rolled back (restored from an older backup, or
		// truncated). Past that size, a failed consistency proof says the same.
		if earlier.size > current.size {
			return fmt.Errorf("rollback: the vault's log has size %d, smaller than the kept checkpoint's %d: it was truncated or restored to an older state", current.size, earlier.size)
		}
	}

	for index := int64(0); index < current.size; index++ {
		entry, err := fetch(fmt.Sprintf("/v1/audit/entries/%d", index), true)
		if err != nil {
			return err
		}
		body, err := fetch(fmt.Sprintf("/v1/audit/proof/inclusion?index=%d&tree_size=%d", index, current.size), true)
		if err != nil {
			return err
		}
		var proof struct{ Hashes []string }
		if err := json.Unmarshal(body, &proof); err != nil {
			return err
		}
		path, err := hashes(proof.Hashes)
		if err != nil {
			return err
		}
		if err := tlog.CheckRecord(path, current.size, current.root, index, tlog.RecordHash(entry)); err != nil {
			return fmt.Errorf("entry %d: %w", index, err)
		}
	}

	if *old != "" {
		query := url.Values{}
		query.Set("old_size", strconv.FormatInt(earlier.size, 10))
		query.Set("new_size", strconv.FormatInt(current.size, 10))
		body, err := fetch("/v1/audit/proof/consistency?"+query.Encode(), true)
		if err != nil {
			return err
		}
		var proof struct{ Hashes []string }
		if err := json.Unmarshal(body, &proof); err != nil {
			return err
		}
		path, err := hashes(proof.Hashes)
		if err != nil {
			return err
		}
		if err := tlog.CheckTree(path, current.size, current.root, earlier.size, earlier.root); err != nil {
			return fmt.Errorf("consistency %d -> %d: %w", earlier.size, current.size, err)
		}
		fmt.Printf("consistent: %d -> %d\n", earlier.size, current.size)
	}
	fmt.Printf("verified: %s size %d, %d inclusion proofs\n", current.origin, current.size, current.size)
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "auditor-go:", err)
		os.Exit(1)
	}
}
