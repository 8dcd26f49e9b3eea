/*
 * consumer_mpi.c -- the MPI side of an installed cpattn (cpattn::cpattn_mpi, or
 * pkg-config cpattn_mpi): a host communicator over MPI_COMM_WORLD agrees on its size.
 */
#include <cpattn_mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = -1, size = -1, crank = -2, csize = -2;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cpattnComm_t comm = NULL;
  int ok = cpattnCommInitMpi(&comm, MPI_COMM_WORLD) == cpattnSuccess && cpattnCommGetRank(comm, &crank) == cpattnSuccess &&
           cpattnCommGetSize(comm, &csize) == cpattnSuccess && crank == rank && csize == size;
  if (!ok) fprintf(stderr, "consumer_mpi: rank %d: %s\n", rank, cpattnGetLastError());
  if (comm) cpattnCommDestroy(comm);
  int all_ok = 0;
  MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (rank == 0 && all_ok) printf("cpattn_mpi: %d ranks agree\n", size);
  MPI_Finalize();
  return all_ok ? 0 : 1;
}
