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
//
// A customer checks what she holds the same way, with her own token:
//
//	auditor-go -customer -vault URL -token "$CUSTOMER_TOKEN" -key KEY -old CHECKPOINT_FILE
//	    (the vault's current checkpoint extends the one she kept)
//	auditor-go -receipt ERASURE_RECEIPT.json -key KEY
//	    (offline: her erasure is in the log the receipt's checkpoint signs,
//	    after her account is gone)
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
	// A customer's token reaches her own consistency proofs, not the entries.
	customer = flag.Bool("customer", false, "with a customer's token: only prove -old consistent with the current checkpoint")
	receipt  = flag.String("receipt", "", "an erasure receipt (JSON) to check offline, with -key")
)

// checkReceipt verifies an erasure receipt with nothing but the key: its
// checkpoint's signature, and its entry's inclusion proof in that tree; the
// entry must be a subject.erased event.
func checkReceipt(path string, verifiers note.Verifiers) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var r struct {
		AuditIndex     int64  `json:"audit_index"`
		Checkpoint     string `json:"checkpoint"`
		InclusionProof struct {
			Index    int64    `json:"index"`
			TreeSize int64    `json:"tree_size"`
			Entry    string   `json:"entry"`
			Hashes   []string `json:"hashes"`
		} `json:"inclusion_proof"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("receipt: %w", err)
	}
	signed, err := open([]byte(r.Checkpoint), verifiers)
	if err != nil {
		return fmt.Errorf("receipt checkpoint: %w", err)
	}
	proof := r.InclusionProof
	if proof.Index != r.AuditIndex || proof.TreeSize != signed.size {
		return errors.New("receipt: the proof is not for its entry in its checkpoint's tree")
	}
	entry, err := base64.StdEncoding.DecodeString(proof.Entry)
	if err != nil {
		return fmt.Errorf("receipt entry: %w", err)
	}
	var event struct{ Kind string }
	if err := json.Unmarshal(entry, &event); err != nil || event.Kind != "subject.erased" {
		return errors.New("receipt: the entry is not a subject.erased event")
	}
	auditPath, err := hashes(proof.Hashes)
	if err != nil {
		return err
	}
	if err := tlog.CheckRecord(auditPath, signed.size, signed.root, proof.Index, tlog.RecordHash(entry)); err != nil {
		return fmt.Errorf("receipt: entry %d: %w", proof.Index, err)
	}
	fmt.Printf("erasure verified: entry %d in %s size %d\n", proof.Index, signed.origin, signed.size)
	return nil
}

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
	if *receipt != "" {
		if strings.TrimSpace(*key) == "" {
			return errors.New("-receipt needs -key: the receipt is checked against the key you hold")
		}
		return checkReceipt(*receipt, verifiers)
	}

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

	if *customer && *old == "" {
		return errors.New("-customer needs -old")
	}
	for index := int64(0); !*customer && index < current.size; index++ {
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
		proofPath := "/v1/audit/proof/consistency?"
		if *customer {
			proofPath = "/v1/me/proof/consistency?"
		}
		body, err := fetch(proofPath+query.Encode(), true)
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
		if *customer {
			return nil
		}
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
