package proc

import (
	"os"
	"strconv"
	"testing"
)

func TestStatusFields(t *testing.T) {
	got, err := StatusFields("self", "Tgid", "Uid", "NoSuchField")
	if err != nil {
		t.Fatal(err)
	}
	if got["Tgid"] != strconv.Itoa(os.Getpid()) {
		t.Errorf("Tgid %q, want %d", got["Tgid"], os.Getpid())
	}
	if _, ok := got["Uid"]; !ok {
		t.Error("no Uid")
	}
	if _, ok := got["NoSuchField"]; ok {
		t.Error("a field the file lacks is present")
	}
	if _, err := StatusFields(strconv.Itoa(1<<30), "Tgid"); err == nil {
		t.Error("no error for a pid that does not exist")
	}
}
