package authority

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseRevocations(t *testing.T) {
	in := `# revoked tokens
tok-1 2026-05-01T10:00:00Z laptop stolen

tok-2
tok-3 not a time, just a reason
"quoted" id
tok-4 2026-05-02T00:00:00Z
`
	recs, bad, err := ParseRevocations("revocations.txt", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if bad == nil || !strings.Contains(bad.Error(), "revocations.txt:6:") {
		t.Errorf("bad line not reported with file:line: %v", bad)
	}
	want := []Revocation{
		{TokenID: "tok-1", RevokedAt: time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), Reason: "laptop stolen"},
		{TokenID: "tok-2"},
		{TokenID: "tok-3", Reason: "not a time, just a reason"},
		{TokenID: "tok-4", RevokedAt: time.Date(2026, 5, 2, 0, 0, 0, 0, time.UTC)},
	}
	if !equalRevocations(recs, want) {
		t.Fatalf("got %+v\nwant %+v", recs, want)
	}
}

func TestAppendRevocation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "revocations.txt")
	// A hand edit without a final newline must not glue the next record onto it.
	os.WriteFile(path, []byte("tok-hand"), 0o644)
	at := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	if err := AppendRevocation(path, Revocation{TokenID: "tok-1", RevokedAt: at, Reason: "multi\nline  reason"}); err != nil {
		t.Fatal(err)
	}
	if err := AppendRevocation(path, Revocation{TokenID: "tok-2", RevokedAt: at}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	want := "tok-hand\ntok-1 2026-05-01T10:00:00Z multi line reason\ntok-2 2026-05-01T10:00:00Z\n"
	if string(data) != want {
		t.Fatalf("file:\n%q\nwant\n%q", data, want)
	}
	if err := AppendRevocation(path, Revocation{TokenID: "has space"}); err == nil {
		t.Error("appended an invalid token id")
	}
}

func TestRevocationFileReloads(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "revocations.txt")
	rf, err := OpenRevocationFile(path, testLogger(t)) // does not exist yet
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	if rf.Revoked("tok-1") {
		t.Fatal("revoked before any record")
	}
	if err := AppendRevocation(path, Revocation{TokenID: "tok-1"}); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 2*time.Second, "revocation seen", func() bool { return rf.Revoked("tok-1") })
	t.Logf("revocation seen after %s", took)

	// Removing the file (or losing read access) never un-revokes.
	os.Remove(path)
	time.Sleep(4 * watchDebounce)
	if !rf.Revoked("tok-1") {
		t.Fatal("removing the file forgot the revocation")
	}
	// An editor's atomic replace is seen.
	tmp := path + ".new"
	os.WriteFile(tmp, []byte("tok-2\n"), 0o644)
	os.Rename(tmp, path)
	eventually(t, 2*time.Second, "replaced file seen", func() bool { return rf.Revoked("tok-2") })
}
