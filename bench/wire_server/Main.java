// A second MongoDB-wire server for the benchmarks: mongo-java-server's in-memory
// backend, which takes commands of any number of statements (FerretDB 1.x hangs
// on 50 or more). It reports MongoDB 5.0's wire version (13) because pymongo 4.x
// refuses the 3.6/4.0 it offers by default. Built and started by bench/wire_server.py.
package bench;

import java.util.List;

import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;

public class Main {
    public static void main(String[] args) throws Exception {
        MongoVersion version = new MongoVersion() {
            public List<Integer> getVersionArray() { return List.of(5, 0, 0); }
            public int getWireVersion() { return 13; }
        };
        MongoServer server = new MongoServer(new MemoryBackend().version(version));
        server.bind("127.0.0.1", Integer.parseInt(args[0]));
        System.out.println("listening on " + args[0]);
        System.out.flush();
        Thread.currentThread().join();
    }
}
